//! Kinds and states of sessions, states of stored items, and the one table of legal
//! session transitions.
//!
//! ```text
//! base / overlay:  starting → running ─finish→ saving → encoding → finished
//! synthesis:       starting → decoding → restoring → running
//! any active:      ─stop→ stopping → stopped      ─error→ failed
//! ```

/// A wire string that names no known value of an enumeration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownValue {
    /// The enumeration.
    pub what: &'static str,
    /// The string.
    pub value: String,
}

impl std::fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` is not a known {}", self.value, self.what)
    }
}

impl std::error::Error for UnknownValue {}

wire_enum! {
    /// What a session does.
    SessionKind("What a session does: `base` (boot a disk image, customize, save as a base), \
        `overlay` (resume a base, customize, encode the difference), `synthesis` (base + \
        overlay → the customized VM, resumed).")
    {
        /// `cloudlet base DISK`: boot a disk image, customize it, save it as a base.
        Base = "base",
        /// `cloudlet overlay BASE`: resume a base, customize it, encode the difference.
        Overlay = "overlay",
        /// `cloudlet synthesis BASE OVERLAY`: rebuild and resume the customized VM.
        Synthesis = "synthesis",
    }
}

wire_enum! {
    /// Where a session is in its life.
    SessionState("Where a session is: active states `starting`, `running`, `saving`, \
        `encoding`, `decoding`, `restoring`, `stopping` (its VM may exist); final states \
        `finished`, `stopped`, `failed`.")
    {
        /// Created; its VM is being set up.
        Starting = "starting",
        /// Its VM runs (customizable, or serving the synthesized application).
        Running = "running",
        /// Its VM is being saved (base / overlay `finish`).
        Saving = "saving",
        /// The saved VM is being hashed into a base or encoded into an overlay.
        Encoding = "encoding",
        /// The overlay is being decoded (synthesis).
        Decoding = "decoding",
        /// The rebuilt VM is being restored (synthesis).
        Restoring = "restoring",
        /// Its VM is being destroyed on request.
        Stopping = "stopping",
        /// Its base or overlay was built; the VM is gone.
        Finished = "finished",
        /// Stopped on request; the VM and its files are gone.
        Stopped = "stopped",
        /// Failed (see `error`); the VM and its work files are gone.
        Failed = "failed",
    }
}

wire_enum! {
    /// Lifecycle of a stored base or overlay.
    ResourceState("Lifecycle of a stored base or overlay: `creating` (files being \
        written), `ready`, `deleting`.")
    {
        /// Its files are being written; not usable yet.
        Creating = "creating",
        /// Complete and usable.
        Ready = "ready",
        /// Being removed.
        Deleting = "deleting",
    }
}

impl SessionState {
    /// States in which a session is over (its VM is gone).
    pub const FINAL: [SessionState; 3] = [
        SessionState::Finished,
        SessionState::Stopped,
        SessionState::Failed,
    ];

    /// Whether the session is over.
    pub fn is_final(self) -> bool {
        Self::FINAL.contains(&self)
    }

    /// Whether the session is not over: its VM may exist, it is listed by default, its
    /// console may be attached. (`Unknown`, from a newer daemon, counts as active: showing
    /// a session too many is better than hiding one.)
    pub fn is_active(self) -> bool {
        !self.is_final()
    }

    /// Whether a session of `kind` may go from `self` to `next`. The one table of the
    /// state machine: the daemon checks every change against it.
    pub fn can_become(self, next: SessionState, kind: SessionKind) -> bool {
        use SessionKind as K;
        use SessionState as S;
        if self.is_final() || self == S::Unknown || next == S::Unknown || kind == K::Unknown {
            return false;
        }
        match next {
            // Any active session can be stopped or fail.
            S::Stopping | S::Stopped | S::Failed => self != next,
            S::Starting => false,
            S::Running => match kind {
                K::Base | K::Overlay => self == S::Starting,
                _ => self == S::Restoring,
            },
            S::Saving => matches!(kind, K::Base | K::Overlay) && self == S::Running,
            S::Encoding => matches!(kind, K::Base | K::Overlay) && self == S::Saving,
            S::Finished => matches!(kind, K::Base | K::Overlay) && self == S::Encoding,
            S::Decoding => kind == K::Synthesis && self == S::Starting,
            S::Restoring => kind == K::Synthesis && self == S::Decoding,
            S::Unknown => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SessionKind as K;
    use SessionState as S;

    fn walk(kind: K, path: &[S]) {
        for pair in path.windows(2) {
            assert!(
                pair[0].can_become(pair[1], kind),
                "{kind}: {} → {} must be allowed",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn every_flow_walks_its_path() {
        for kind in [K::Base, K::Overlay] {
            walk(
                kind,
                &[S::Starting, S::Running, S::Saving, S::Encoding, S::Finished],
            );
        }
        walk(
            K::Synthesis,
            &[S::Starting, S::Decoding, S::Restoring, S::Running],
        );
        for kind in K::ALL {
            for from in S::ALL.iter().filter(|s| s.is_active()) {
                assert!(from.can_become(S::Failed, *kind), "{kind} {from} → failed");
                assert!(
                    from.can_become(S::Stopped, *kind),
                    "{kind} {from} → stopped"
                );
            }
        }
        walk(K::Synthesis, &[S::Running, S::Stopping, S::Stopped]);
    }

    #[test]
    fn illegal_moves_are_refused() {
        for kind in K::ALL {
            for from in S::FINAL {
                for to in S::ALL {
                    assert!(!from.can_become(*to, *kind), "{kind}: {from} → {to}");
                }
            }
            for from in S::ALL {
                assert!(!from.can_become(S::Starting, *kind));
                assert!(!from.can_become(S::Unknown, *kind));
                assert!(!S::Unknown.can_become(*from, *kind));
            }
        }
        assert!(!S::Running.can_become(S::Saving, K::Synthesis));
        assert!(!S::Starting.can_become(S::Decoding, K::Overlay));
        assert!(!S::Starting.can_become(S::Running, K::Synthesis));
        assert!(!S::Running.can_become(S::Finished, K::Base));
        assert!(!S::Decoding.can_become(S::Running, K::Synthesis));
    }

    #[test]
    fn wire_names_round_trip_and_unknown_ones_are_tolerated() {
        for s in S::ALL {
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(serde_json::from_str::<S>(&json).unwrap(), *s);
            assert_eq!(s.as_str().parse::<S>().unwrap(), *s);
        }
        assert_eq!(
            serde_json::from_str::<S>("\"hibernating\"").unwrap(),
            S::Unknown
        );
        assert!("hibernating".parse::<S>().is_err());
        assert!(S::Unknown.is_active());
        assert_eq!(
            ResourceState::try_from("ready".to_string()),
            Ok(ResourceState::Ready)
        );
    }
}
