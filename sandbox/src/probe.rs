//! What this host can enforce, layer by layer, for `bulwark probe` and for refusing to run a
//! job where a layer it needs is missing.

use std::fs;

use crate::cgroup;

/// One isolation layer's status.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Layer name: `user-namespaces`, `landlock`, `seccomp`, `cgroups`.
    pub name: &'static str,
    /// Whether the layer can be enforced.
    pub available: bool,
    /// What was found, and what is missing when not available.
    pub detail: String,
}

/// The host's layers.
#[derive(Debug, Clone)]
pub struct HostLayers {
    /// Every layer in a fixed order.
    pub layers: Vec<Layer>,
    /// Usable Landlock ABI (0: none).
    pub landlock_abi: u32,
    /// cgroup support found.
    pub cgroups: cgroup::Support,
    /// Usable cgroup version for this user, if any.
    pub cgroup_version: Option<cgroup::Version>,
}

impl HostLayers {
    /// The named layer.
    pub fn layer(&self, name: &str) -> Option<&Layer> {
        self.layers.iter().find(|l| l.name == name)
    }
}

fn read_trim(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Inspects the host: reads sysctls and mounts, asks Landlock its ABI, and, when
/// `try_cgroup` is set, creates and removes one cgroup to see whether this user may. (A job
/// launch skips that trial: it creates the job's cgroup right after and fails closed there.)
pub fn host_layers(try_cgroup: bool) -> HostLayers {
    let mut layers = Vec::new();

    // User namespaces and the distribution switches that restrict them.
    let mut problems = Vec::new();
    if read_trim("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        problems.push("kernel.unprivileged_userns_clone=0 (Debian switch): set it to 1");
    }
    if read_trim("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        problems.push("user.max_user_namespaces=0: raise it");
    }
    if read_trim("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        problems.push("kernel.apparmor_restrict_unprivileged_userns=1 (Ubuntu AppArmor): allow bulwark in an AppArmor profile or set it to 0");
    }
    if !std::path::Path::new("/proc/self/ns/user").exists() {
        problems.push("kernel built without user namespaces");
    }
    layers.push(Layer {
        name: "user-namespaces",
        available: problems.is_empty(),
        detail: if problems.is_empty() {
            format!(
                "available (max_user_namespaces={})",
                read_trim("/proc/sys/user/max_user_namespaces").unwrap_or_else(|| "?".into())
            )
        } else {
            problems.join("; ")
        },
    });

    let kernel_abi = crate::sys::landlock_abi_version();
    let landlock_abi = crate::landlock::usable_abi();
    layers.push(Layer {
        name: "landlock",
        available: landlock_abi > 0,
        detail: if landlock_abi > 0 {
            format!(
                "ABI {kernel_abi} (enforcing ABI {landlock_abi}{})",
                if landlock_abi >= 6 {
                    " with scopes"
                } else {
                    ""
                }
            )
        } else if kernel_abi == 0 {
            "not available: the kernel lacks Landlock or it is not in the lsm= boot list".into()
        } else {
            format!(
                "ABI {kernel_abi} is below the required {}",
                crate::landlock::MIN_ABI
            )
        },
    });

    let seccomp_ok = read_trim("/proc/sys/kernel/seccomp/actions_avail")
        .map(|a| a.split_whitespace().any(|x| x == "errno"))
        .unwrap_or(false);
    let filters_ok = crate::seccomp::compile().is_ok();
    layers.push(Layer {
        name: "seccomp",
        available: seccomp_ok && filters_ok,
        detail: if !seccomp_ok {
            "seccomp filter mode with errno action not available in this kernel".into()
        } else if !filters_ok {
            format!("no filter for architecture {}", std::env::consts::ARCH)
        } else {
            "filter mode available; allowlist compiles".into()
        },
    });

    let cgroups = cgroup::detect();
    let usable = cgroups.usable();
    let not_writable = match usable {
        Some(_) if try_cgroup => cgroups.check_writable().err(),
        _ => None,
    };
    let writable = usable.is_some() && not_writable.is_none();
    let cgroup_version = if writable { usable } else { None };
    layers.push(Layer {
        name: "cgroups",
        available: cgroup_version.is_some(),
        detail: match (usable, writable) {
            (Some(v), true) => format!("{} (memory, pids{}): {}", v.as_str(), if v == cgroup::Version::V1 { ", freezer" } else { "" }, cgroups.describe()),
            (Some(v), false) => format!(
                "{} present but this user cannot make job cgroups ({}): memory and pids limits need cgroups, or limits.allow_rlimit_fallback = true to run with rlimits alone; {}",
                v.as_str(),
                not_writable.map(|e| e.to_string()).unwrap_or_default(),
                cgroups.describe()
            ),
            (None, _) => format!("no hierarchy with both memory and pids controllers: {}", cgroups.describe()),
        },
    });

    HostLayers {
        layers,
        landlock_abi,
        cgroups,
        cgroup_version,
    }
}
