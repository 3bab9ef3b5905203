//! The words records carry: every timeline kind, every announcement kind and every reason code.
//! Each has one stable `code()` (what records, JSON, replay output and scripts use) and a human
//! text (its `Display`). Code that decides on one matches the enum, never the text.
//!
//! They live with the records (not in the engine) because the records store them; the engine's
//! protocol (`engine::protocol`) re-exports them beside `Event`, `Effect`, `Change` and `Reply`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A fieldless enum of stable codes: `ALL`, `code()`, `parse()`, `text()`, serde as the code.
macro_rules! words {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $code:literal, $text:literal;)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The stable code.
            pub fn code(self) -> &'static str {
                match self {
                    $($name::$variant => $code,)*
                }
            }

            /// What the code means, for people.
            pub fn text(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            pub fn parse(code: &str) -> Option<$name> {
                match code {
                    $($code => Some($name::$variant),)*
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.text())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.code())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let code = String::deserialize(d)?;
                $name::parse(&code).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        concat!("unknown ", stringify!($name), " `{}`"),
                        code
                    ))
                })
            }
        }
    };
}

words! {
    /// What one timeline entry records.
    Kind {
        BreachOpened = "breach_opened", "a breach opened";
        BreachRefired = "breach_refired", "the breach fired again while clearing";
        BreachResolving = "breach_resolving", "the breach's alerts resolved; clearing";
        BreachCleared = "breach_cleared", "the breach cleared";
        BreachAlertsCapped = "breach_alerts_capped", "the breach holds the most alerts one breach tracks";
        NotActing = "not_acting", "the breach's deadline came and rollbackd did not act";
        Triggered = "triggered", "an incident opened";
        MessageDefault = "message_default", "a rule message fell back to the built-in one";
        AwaitingApproval = "awaiting_approval", "approval requested";
        Approved = "approved", "approved";
        RollingBack = "rolling_back", "the rollback started";
        Verifying = "verifying", "verifying";
        RolledBack = "rolled_back", "rolled back";
        RollbackFailed = "rollback_failed", "the rollback failed";
        Rejected = "rejected", "rejected";
        Expired = "expired", "not approved in time";
        Cancelled = "cancelled", "cancelled";
        Suppressed = "suppressed", "suppressed: recorded, nothing run";
        Vote = "vote", "a vote counted";
        VoteIgnored = "vote_ignored", "a vote recorded and not counted";
        StepStarted = "step_started", "a step started";
        StepDone = "step_done", "a step succeeded";
        StepRetry = "step_retry", "a step failed and will be retried";
        StepFailed = "step_failed", "a step failed";
        StepProbe = "step_probe", "a started step's probe answered";
        StepUnknown = "step_unknown", "a step's outcome is unknown";
        StepResumed = "step_resumed", "a step resumed after a restart";
        AfterCheck = "after_check", "an after hook ran";
        Notified = "notified", "an announcement was delivered";
        NotificationDropped = "notification_dropped", "an announcement was refused for good";
        NotificationRetry = "notification_retry", "an announcement will be retried";
        PagerdutyLinked = "pagerduty_linked", "linked to a PagerDuty incident";
        Frozen = "frozen", "releases frozen";
        Unfrozen = "unfrozen", "releases unfrozen";
        UnfreezeStepsEnded = "unfreeze_steps_ended", "the on_unfreeze steps ended";
        ReleaseDuringFreeze = "release_during_freeze", "a release was posted during a freeze";
    }
}

words! {
    /// What one announcement tells its receivers.
    Announcement {
        ApprovalRequested = "approval_requested", "approval needed";
        Approved = "approved", "rollback approved";
        Rejected = "rejected", "rollback rejected";
        Expired = "expired", "rollback not approved in time";
        Cancelled = "cancelled", "rollback cancelled";
        RollbackStarted = "rollback_started", "rollback initiated";
        StepFailed = "step_failed", "a rollback step failed";
        RolledBack = "rolled_back", "rolled back";
        RollbackFailed = "rollback_failed", "rollback failed";
        FreezeLifted = "freeze_lifted", "releases unfrozen";
        UnfreezeStepsDone = "unfreeze_steps_done", "the on_unfreeze steps succeeded";
        UnfreezeStepFailed = "unfreeze_step_failed", "an on_unfreeze step failed";
    }
}

impl Announcement {
    /// The incident needs nobody any more: the PagerDuty page it raised can resolve.
    pub fn ends_the_page(self) -> bool {
        matches!(
            self,
            Announcement::RolledBack
                | Announcement::Rejected
                | Announcement::Expired
                | Announcement::Cancelled
        )
    }
}

words! {
    /// Why the engine did not act on a breach, or suppressed an incident it opened.
    ReasonCode {
        NoService = "no_service", "the rule's service cannot be told from the alert";
        NoEnvironment = "no_environment", "the rule's environment cannot be told from the alert";
        NoRelease = "no_release", "no release of the service is known";
        ReleaseAfterBreach = "release_after_breach", "the latest release came after the breach began";
        ReleaseTooOld = "release_too_old", "the latest release is older than release.max_age";
        NoPreviousRelease = "no_previous_release", "no earlier release to roll back to";
        LoopGuard = "loop_guard", "the target is a deployment an incident rolled back from";
        DryRun = "dry_run", "dry run";
        Shadow = "shadow", "shadow mode";
        Frozen = "frozen", "the service's releases are frozen";
        OneAtATime = "one_at_a_time", "another incident of the service is active";
        Budget = "budget", "the service's rollback budget is spent";
        CannotRun = "cannot_run", "a secret or program the plan needs is missing";
    }
}

impl From<crate::model::IncidentState> for Kind {
    fn from(s: crate::model::IncidentState) -> Kind {
        use crate::model::IncidentState as S;
        match s {
            S::Triggered => Kind::Triggered,
            S::AwaitingApproval => Kind::AwaitingApproval,
            S::Approved => Kind::Approved,
            S::RollingBack => Kind::RollingBack,
            S::Verifying => Kind::Verifying,
            S::RolledBack => Kind::RolledBack,
            S::RollbackFailed => Kind::RollbackFailed,
            S::Rejected => Kind::Rejected,
            S::Expired => Kind::Expired,
            S::Cancelled => Kind::Cancelled,
            S::Suppressed => Kind::Suppressed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn round_trips<T: Copy + PartialEq + fmt::Debug + Serialize + for<'de> Deserialize<'de>>(
        all: &[T],
        code: fn(T) -> &'static str,
        parse: fn(&str) -> Option<T>,
    ) {
        let mut seen = HashSet::new();
        for &w in all {
            assert!(seen.insert(code(w)), "code {} is used twice", code(w));
            assert_eq!(parse(code(w)), Some(w));
            let json = serde_json::to_string(&w).unwrap();
            assert_eq!(json, format!("\"{}\"", code(w)));
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), w);
            assert!(
                code(w).bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                code(w)
            );
        }
        assert!(parse("no_such_code").is_none());
    }

    #[test]
    fn every_code_round_trips_and_is_unique() {
        round_trips(Kind::ALL, Kind::code, Kind::parse);
        round_trips(Announcement::ALL, Announcement::code, Announcement::parse);
        round_trips(ReasonCode::ALL, ReasonCode::code, ReasonCode::parse);
        assert!(serde_json::from_str::<Kind>("\"nope\"").is_err());
    }

    #[test]
    fn every_incident_state_has_its_timeline_kind() {
        for s in crate::model::IncidentState::ALL {
            assert_eq!(Kind::from(s).code(), s.as_str());
        }
    }
}
