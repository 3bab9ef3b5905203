//! The CI snippets in `deploy/ci/` run as their CI would run them (each GitHub Actions step, each
//! GitLab script entry, with `sh -e`, the job's and step's environment): against the real daemon,
//! a deploy goes out and is reported while the service is not frozen, and fails before deploying
//! while `GET /v1/freezes/{service}` answers 423.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

const READ: &str = "ciSnippetsReadToken0123456789abc";
const RELEASES: &str = "ciSnippetsReleasesToken012345678";
const ADMIN: &str = "ciSnippetsAdminToken0123456789ab";

/// The commands a CI job runs, in order, each with its environment.
type Job = Vec<(String, BTreeMap<String, String>)>;

fn strings(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().map_or(v.to_string(), String::from)))
                .collect()
        })
        .unwrap_or_default()
}

/// GitHub Actions: the deploy job's `run` steps; `${{ secrets.NAME }}` from `secrets`.
fn github(secrets: &BTreeMap<&str, &str>, sha: &str) -> Job {
    let doc: Value =
        serde_saphyr::from_str(&repo_file("deploy/ci/github-actions.yml")).expect("yaml");
    let job = &doc["jobs"]["deploy"];
    let mut base = strings(&job["env"]);
    base.insert("GITHUB_SHA".into(), sha.into());
    base.insert("GITHUB_RUN_ID".into(), "4242".into());
    base.insert("GITHUB_RUN_ATTEMPT".into(), "1".into());
    job["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|step| {
            let run = step["run"].as_str()?;
            let mut env = base.clone();
            for (k, v) in strings(&step["env"]) {
                let name = v
                    .trim_start_matches("${{ secrets.")
                    .trim_end_matches(" }}")
                    .to_string();
                env.insert(
                    k,
                    secrets
                        .get(name.as_str())
                        .expect("a known secret")
                        .to_string(),
                );
            }
            Some((run.to_string(), env))
        })
        .collect()
}

/// GitLab CI: the deploy job's script entries; masked variables from `secrets`.
fn gitlab(secrets: &BTreeMap<&str, &str>, sha: &str) -> Job {
    let doc: Value = serde_saphyr::from_str(&repo_file("deploy/ci/gitlab-ci.yml")).expect("yaml");
    let job = &doc["deploy"];
    let mut env = strings(&job["variables"]);
    for (k, v) in secrets {
        env.insert(k.to_string(), v.to_string());
    }
    env.insert("CI_COMMIT_SHA".into(), sha.into());
    env.insert("CI_PIPELINE_ID".into(), "77".into());
    env.insert("CI_JOB_ID".into(), sha.into());
    job["script"]
        .as_array()
        .expect("script")
        .iter()
        .map(|s| (s.as_str().expect("a command").to_string(), env.clone()))
        .collect()
}

/// Runs a job's commands in `dir` until one fails: (succeeded, output).
fn run(job: &Job, url: &str, dir: &Path) -> (bool, String) {
    let mut output = String::new();
    for (script, env) in job {
        let out = Command::new("/bin/sh")
            .args(["-e", "-c", script])
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .env("ROLLBACKD_URL", url)
            .output()
            .expect("sh");
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            return (false, output);
        }
    }
    (true, output)
}

#[test]
fn the_ci_snippets_report_the_release_and_refuse_to_deploy_while_frozen() {
    let config =
        format!("tokens: {{ read: \"{READ}\", releases: \"{RELEASES}\", admin: \"{ADMIN}\" }}\n");
    let setup = Setup::new(&config, "rules: []\n");
    let d = setup.start();
    let work = setup.path().join("checkout");
    std::fs::create_dir_all(&work).expect("mkdir");
    let deploy = work.join("deploy.sh");
    std::fs::write(&deploy, "#!/bin/sh\necho deployed > deployed\n").expect("deploy.sh");
    std::fs::set_permissions(&deploy, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let secrets = BTreeMap::from([
        ("ROLLBACKD_READ_TOKEN", READ),
        ("ROLLBACKD_RELEASES_TOKEN", RELEASES),
    ]);
    let releases = || {
        let (s, v) = get(&d.url("/v1/releases/checkout"), Some(READ));
        assert_eq!(s, 200, "{v}");
        v.to_string()
    };
    type Snippet = fn(&BTreeMap<&str, &str>, &str) -> Job;
    let snippets: [(&str, Snippet); 2] = [("github", github), ("gitlab", gitlab)];

    for (name, job) in snippets {
        let sha = format!("{name}-sha-1");
        let _ = std::fs::remove_file(work.join("deployed"));
        let (ok, out) = run(&job(&secrets, &sha), &d.base, &work);
        assert!(ok, "{name}: {out}");
        assert!(out.contains("checkout is not frozen"), "{name}: {out}");
        assert!(work.join("deployed").exists(), "{name} did not deploy");
        assert!(releases().contains(&sha), "{name} did not report {sha}");
    }

    assert_eq!(
        put_freeze(&d, "checkout", "rollback by hand", Some(ADMIN)),
        200
    );
    for (name, job) in snippets {
        let sha = format!("{name}-sha-2");
        let _ = std::fs::remove_file(work.join("deployed"));
        let (ok, out) = run(&job(&secrets, &sha), &d.base, &work);
        assert!(!ok, "{name} deployed while frozen: {out}");
        assert!(out.contains("holds checkout frozen"), "{name}: {out}");
        assert!(out.contains("rollback by hand"), "{name}: {out}");
        assert!(
            !work.join("deployed").exists(),
            "{name} deployed while frozen"
        );
        assert!(!releases().contains(&sha), "{name} reported {sha}");
    }
}
