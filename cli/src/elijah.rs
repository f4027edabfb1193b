//! Elijah's `cloudlet command [option] -- [qemu-options]`: the daemon runs stock QEMU
//! through libvirt, so only `-m` and `-smp` (on `base`) have a meaning here; every other
//! option is reported, never silently dropped.

/// What the trailing qemu options asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct QemuOptions {
    /// `-m`: guest memory in MiB.
    pub memory_mib: Option<u64>,
    /// `-smp`: virtual CPUs.
    pub vcpus: Option<u32>,
    /// Options without an equivalent, each with its value (`-vga std`).
    pub ignored: Vec<String>,
}

impl QemuOptions {
    /// Parses `args`; `-m`/`-smp` are honoured only when `sizing` (the `base` command,
    /// where the VM is booted; later sessions resume the base's saved VM as it was).
    pub fn parse(args: &[String], sizing: bool) -> Self {
        let mut out = Self::default();
        let mut i = 0;
        while i < args.len() {
            let opt = args[i].as_str();
            // An option's value is the next word unless that is another option.
            let value = args
                .get(i + 1)
                .filter(|v| opt.starts_with('-') && !v.starts_with('-'))
                .map(String::as_str);
            i += 1 + usize::from(value.is_some());
            let honoured = match (opt, value, sizing) {
                ("-m", Some(v), true) => parse_memory_mib(v).map(|m| out.memory_mib = Some(m)),
                ("-smp", Some(v), true) => parse_vcpus(v).map(|n| out.vcpus = Some(n)),
                _ => None,
            };
            if honoured.is_none() {
                out.ignored
                    .push(value.map_or_else(|| opt.to_string(), |v| format!("{opt} {v}")));
            }
        }
        out
    }

    /// Prints the warning for ignored options (stderr).
    pub fn warn(&self) {
        if !self.ignored.is_empty() {
            crate::output::warn(&format!(
                "ignoring unsupported qemu option(s): {}",
                self.ignored.join(" ")
            ));
        }
    }

    /// Adds `ignored_qemu_options` to a JSON answer when any were ignored.
    pub fn annotate(&self, value: &mut serde_json::Value) {
        if !self.ignored.is_empty() {
            if let Some(obj) = value.as_object_mut() {
                obj.insert("ignored_qemu_options".into(), self.ignored.clone().into());
            }
        }
    }
}

/// `-m 512`, `-m 512M`, `-m 1G`, `-m size=1G` → MiB (a bare number is MiB, as in QEMU).
fn parse_memory_mib(v: &str) -> Option<u64> {
    let v = v.split(',').next()?.trim_start_matches("size=");
    let (digits, mult) = match v.chars().last()? {
        'M' | 'm' => (&v[..v.len() - 1], 1),
        'G' | 'g' => (&v[..v.len() - 1], 1024),
        'T' | 't' => (&v[..v.len() - 1], 1024 * 1024),
        _ => (v, 1),
    };
    digits
        .parse::<u64>()
        .ok()?
        .checked_mul(mult)
        .filter(|m| *m > 0)
}

/// `-smp 2`, `-smp cpus=2,sockets=1` → 2.
fn parse_vcpus(v: &str) -> Option<u32> {
    let first = v.split(',').next()?;
    first
        .trim_start_matches("cpus=")
        .parse::<u32>()
        .ok()
        .filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn memory_and_cpus_on_base() {
        let q = QemuOptions::parse(&args("-m 2G -smp 2 -enable-kvm -vga std"), true);
        assert_eq!(q.memory_mib, Some(2048));
        assert_eq!(q.vcpus, Some(2));
        assert_eq!(q.ignored, vec!["-enable-kvm", "-vga std"]);
        assert_eq!(
            QemuOptions::parse(&args("-m 512"), true).memory_mib,
            Some(512)
        );
        assert_eq!(
            QemuOptions::parse(&args("-m 256M -smp cpus=4,sockets=1"), true),
            QemuOptions {
                memory_mib: Some(256),
                vcpus: Some(4),
                ignored: vec![]
            }
        );
    }

    #[test]
    fn nothing_is_dropped_silently() {
        let q = QemuOptions::parse(&args("-m 1G -smp 2 -cdrom x.iso"), false);
        assert_eq!(q.memory_mib, None);
        assert_eq!(q.ignored, vec!["-m 1G", "-smp 2", "-cdrom x.iso"]);
        let q = QemuOptions::parse(&args("-m lots"), true);
        assert_eq!(q.ignored, vec!["-m lots"]);
    }
}
