//! A real headless Chromium (Debian's `chromium` package; `scripts/test.sh` installs it): the DOM
//! of a page after it loaded, and a screenshot of it, decoded.

use std::path::Path;
use std::process::Command;

/// The browser window, so a screenshot has a known size.
pub const WINDOW: (u32, u32) = (1280, 1400);

fn chromium() -> String {
    for name in ["chromium", "chromium-browser"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
        {
            return name.to_string();
        }
    }
    panic!("chromium is not installed: `apt-get install -y chromium` (scripts/test.sh does it)");
}

/// The page's DOM after Chromium loaded and rendered it, and a screenshot next to it.
pub fn render(url: &str, shot: &Path) -> String {
    let profile = tempfile::tempdir().expect("profile");
    let window = format!("--window-size={},{}", WINDOW.0, WINDOW.1);
    let common_flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        &window,
    ];
    let out = Command::new(chromium())
        .args(common_flags)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = Command::new(chromium())
        .args(common_flags)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(url)
        .output();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A page without credentials answers 401 and asks a browser for them (HTTP Basic).
pub fn asks_for_basic_auth(url: &str) {
    let r = super::client().get(url).send().expect("page");
    assert_eq!(r.status().as_u16(), 401, "{url}");
    let asks = r.headers()["www-authenticate"].to_str().unwrap_or("");
    assert!(asks.starts_with("Basic"), "{url}: {asks}");
}

/// A decoded screenshot: its size and RGB pixels.
pub struct Shot {
    pub width: u32,
    pub height: u32,
    rgb: Vec<[u8; 3]>,
}

impl Shot {
    pub fn load(path: &Path) -> Shot {
        let file = std::fs::File::open(path).expect("no screenshot");
        let mut reader = png::Decoder::new(file)
            .read_info()
            .expect("screenshot is a PNG");
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).expect("decode screenshot");
        let step = info.color_type.samples();
        assert!(
            step >= 3,
            "screenshot is not in colour: {:?}",
            info.color_type
        );
        let rgb = buf[..info.buffer_size()]
            .chunks(step)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        Shot {
            width: info.width,
            height: info.height,
            rgb,
        }
    }

    /// How many pixels are exactly `colour`.
    pub fn count(&self, colour: [u8; 3]) -> usize {
        self.rgb.iter().filter(|p| **p == colour).count()
    }

    /// How many pixels differ from the most common one (the background).
    pub fn drawn(&self) -> usize {
        let mut counts = std::collections::HashMap::new();
        for p in &self.rgb {
            *counts.entry(*p).or_insert(0usize) += 1;
        }
        let background = counts.values().max().copied().unwrap_or(0);
        self.rgb.len() - background
    }
}
