//! The job's filesystem view: a fresh tmpfs root holding only what the job needs.
//!
//! Why a tmpfs root and read-only binds rather than an overlay of the host root: anything not
//! explicitly bound simply does not exist for the job (`/root`, `/home`, `/var/lib/bulwark`,
//! `/etc/shadow`, the runner's sockets), so forgetting to hide something fails safe. This is
//! the approach of bubblewrap (`--ro-bind`) and nsjail.
//!
//! Order matters, and the steps of [`build_root`] say why at each point. In particular `/proc`
//! is mounted while the old root is still attached: the kernel only lets a user namespace mount
//! procfs while a fully visible procfs exists in its mount namespace (measured here: EPERM
//! otherwise, the same order bubblewrap uses).

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root};

use crate::spec::{SandboxSpec, JOB_GID, JOB_UID};
use crate::sys::mount_attr;

/// Where the new root is assembled, in the job's private mount namespace (the host's `/tmp` is
/// only covered there, never changed). Every bind source is either a public system path or a
/// descriptor opened beforehand, so covering the host's `/tmp` hides nothing the job needs.
pub const NEW_ROOT: &str = "/tmp";

/// Device nodes bound from the host into the job's `/dev`.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// File at the root of the job's view that DAC and the mounts allow reading but the Landlock
/// ruleset does not cover: reading it fails with EACCES only because Landlock denies it.
pub const LANDLOCK_CANARY: &str = "/.bulwark-landlock-canary";

/// A failed mount step, naming the step and the path.
#[derive(Debug, thiserror::Error)]
#[error("{step} {path}: {source}")]
pub struct MountError {
    /// What was being done.
    pub step: &'static str,
    /// The path it was done to.
    pub path: PathBuf,
    /// The system error.
    #[source]
    pub source: io::Error,
}

fn err<E: Into<io::Error>>(step: &'static str, path: &Path) -> impl FnOnce(E) -> MountError {
    let path = path.to_path_buf();
    move |e| MountError {
        step,
        path,
        source: e.into(),
    }
}

/// Where the job's own places come from. Each is a `/proc/self/fd/N` path of a descriptor the
/// helper opened (without following a final symlink) in this mount namespace, so the bind
/// uses exactly the directory that was checked.
#[derive(Debug)]
pub struct Places<'a> {
    /// Source of `/workspace`.
    pub workspace: &'a Path,
    /// Source of `/tmp`.
    pub tmp: &'a Path,
    /// Each tool's name and the source of `/tools/<name>`.
    pub tools: &'a [(String, PathBuf)],
    /// The pinned root filesystem, if any.
    pub rootfs: Option<&'a Path>,
    /// Source of `/cache`, when the job has caches.
    pub cache: Option<&'a Path>,
}

/// Builds the job's root and pivots into it. Runs in the job's init (pid 1 of the new pid
/// namespace), inside the new user and mount namespaces.
///
/// Returns, when the runner may update the job's credentials (`credential_updates`), a
/// writable clone of the credentials' own tmpfs that no path reaches: init writes updates
/// through it, while the job's view of `/run/credentials` is sealed read-only.
pub fn build_root(
    spec: &SandboxSpec,
    places: &Places<'_>,
) -> Result<Option<std::os::fd::OwnedFd>, MountError> {
    let root = Path::new(NEW_ROOT);
    // Whatever the runner's umask: directories made below are 0755, files exactly the mode
    // given (none of which has a group or other write bit). The runner's umask is restored
    // when the root is built, so the job's processes inherit it as before.
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let built = build_root_inner(spec, root, places);
    nix::sys::stat::umask(umask);
    built
}

fn build_root_inner(
    spec: &SandboxSpec,
    root: &Path,
    places: &Places<'_>,
) -> Result<Option<std::os::fd::OwnedFd>, MountError> {
    let (workspace, tmp, tools_src, rootfs) =
        (places.workspace, places.tmp, places.tools, places.rootfs);
    // 1. Nothing we mount may propagate back to the host, and nothing the host mounts later
    //    may appear in the job.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(err("make mounts private", Path::new("/")))?;

    // 2. A fresh, empty tmpfs is the new root: only what we add below exists for the job.
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=16m"),
    )
    .map_err(err("mount tmpfs root", root))?;

    // 3. System directories, read-only: the host's, or with a pinned rootfs only the rootfs's
    //    (the host's /usr is then not visible at all). Symlinks (merged /usr) are recreated.
    let etc = root.join("etc");
    match rootfs {
        None => {
            for host in &spec.system_paths {
                bind_host_path(host, root)?;
            }
            // 4. A minimal /etc: selected host entries, plus files describing the job user.
            fs::create_dir(&etc).map_err(err("create", &etc))?;
            for host in &spec.etc_entries {
                copy_or_bind_etc(host, root)?;
            }
        }
        Some(rootfs) => {
            for entry in fs::read_dir(rootfs).map_err(err("read rootfs", rootfs))? {
                let entry = entry.map_err(err("read rootfs", rootfs))?;
                let name = entry.file_name();
                let name_str = name.to_string_lossy();
                // The sandbox provides these itself.
                if [
                    "dev",
                    "proc",
                    "sys",
                    "tmp",
                    "workspace",
                    "tools",
                    "cache",
                    "run",
                    "etc",
                ]
                .contains(&name_str.as_ref())
                    || name_str.starts_with('.')
                {
                    continue;
                }
                place_readonly(&entry.path(), &root.join(&name))?;
            }
            fs::create_dir(&etc).map_err(err("create", &etc))?;
            let rootfs_etc = rootfs.join("etc");
            if let Ok(entries) = fs::read_dir(&rootfs_etc) {
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    if ["passwd", "group", "hosts", "hostname", "shadow", "gshadow"]
                        .contains(&name.to_string_lossy().as_ref())
                    {
                        continue;
                    }
                    place_readonly(&entry.path(), &etc.join(&name))?;
                }
            }
        }
    }
    write_file(&etc.join("passwd"), &format!(
        "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\nbuild:x:{JOB_UID}:{JOB_GID}:bulwark job:/workspace:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    ))?;
    write_file(
        &etc.join("group"),
        &format!("root:x:0:\nbuild:x:{JOB_GID}:\nnogroup:x:65534:\n"),
    )?;
    write_file(
        &etc.join("hosts"),
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )?;
    write_file(&etc.join("hostname"), &format!("{}\n", spec.hostname))?;

    // 5. Pinned tools, each read-only (and nosuid, nodev) at /tools/<name>, then the Landlock
    //    canary. A tool name cannot contain `/` or `..` (the spec's name pattern), and is
    //    checked again here because this code trusts nothing it is given.
    let tools = root.join("tools");
    fs::create_dir(&tools).map_err(err("create", &tools))?;
    for (name, src) in tools_src {
        if !plain_name(name) {
            return Err(MountError {
                step: "tool name",
                path: PathBuf::from(name),
                source: io::Error::from(io::ErrorKind::InvalidInput),
            });
        }
        bind_dir(src, &tools.join(name), Access::ReadOnly)?;
    }
    // 5b. Credentials of a trusted job (docs/credentials.md): files on a small tmpfs of their
    //     own, so only in memory and in the job's mount namespace, gone with it; never on the
    //     host's disk. Owned by the job's uid (the helper is that uid in the namespace), files
    //     0400 and directories 0500, read-only in the job's view once the root is sealed
    //     below. When the runner may send newer ones, init keeps a writable clone of this
    //     mount, taken before the seal and reachable by no path.
    let mut credentials_writer = None;
    if !spec.credentials.is_empty() {
        let base = root.join(CREDENTIALS_DIR.trim_start_matches('/'));
        fs::create_dir_all(&base).map_err(err("create", &base))?;
        mount(
            Some("tmpfs"),
            &base,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0755,size=1m,nr_inodes=256"),
        )
        .map_err(err("mount credentials tmpfs", &base))?;
        write_credentials(&base, &spec.credentials)?;
        if spec.takes_credential_updates() {
            credentials_writer = Some(
                crate::sys::open_tree_clone(&base)
                    .map_err(err("clone credentials mount", &base))?,
            );
        }
    }

    let canary = root.join(LANDLOCK_CANARY.trim_start_matches('/'));
    write_file(
        &canary,
        "This file is readable by its mode and mounts but outside the Landlock ruleset.\n",
    )?;

    // 6. Seal: the root and every bind placed so far become read-only, nosuid and nodev in
    //    one call. Only mount points for what follows are created first; nothing can be
    //    created in the root after this.
    let mount_points = ["workspace", "tmp", "dev", "proc"].map(|d| root.join(d));
    for d in &mount_points {
        fs::create_dir(d).map_err(err("create", d))?;
    }
    let cache_point = root.join("cache");
    if places.cache.is_some() {
        fs::create_dir(&cache_point).map_err(err("create", &cache_point))?;
    }
    seal_readonly_tree(root)?;

    // 7. The job's writable places: /workspace, /tmp and, when it has caches, /cache; never
    //    executable as setuid, no devices.
    bind(workspace, &mount_points[0], Access::Writable)?;
    bind(tmp, &mount_points[1], Access::Writable)?;
    if let Some(cache) = places.cache {
        bind(cache, &cache_point, Access::Writable)?;
    }

    // 8. A small /dev: a few host device nodes bound in, shm, and the usual symlinks.
    build_dev(&mount_points[2])?;

    // 9. A fresh /proc for the new pid namespace, *before* the old root is detached (see the
    //    module docs), with the kernel-tunable parts made read-only.
    let proc_dir = &mount_points[3];
    mount(
        Some("proc"),
        proc_dir.as_path(),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(err("mount proc", proc_dir))?;
    for sub in ["sys", "sysrq-trigger", "irq", "bus"] {
        let p = proc_dir.join(sub);
        if p.exists() {
            mount(
                Some(&p),
                &p,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(err("bind proc entry", &p))?;
            restrict(&p, mount_attr::RDONLY, true)?;
        }
    }

    // 10. Switch roots. pivot_root(".", ".") stacks the old root on top of the new one; the
    //     lazy unmount then detaches it, so no path leads back to the host's tree. The new
    //     root is read-only since step 6: the job can write only where it was given a place.
    chdir(root).map_err(err("chdir", root))?;
    pivot_root(".", ".").map_err(err("pivot_root", root))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err("detach old root", Path::new("/")))?;
    chdir("/").map_err(err("chdir", Path::new("/")))?;
    Ok(credentials_writer)
}

/// Set once the root is sealed; a read-only bind after that would stay writable, so it is
/// refused. (Init builds one root per process, single-threaded.)
static SEALED: AtomicBool = AtomicBool::new(false);

/// Makes the new root and every mount under it read-only, nosuid and nodev (step 6).
fn seal_readonly_tree(root: &Path) -> Result<(), MountError> {
    restrict(
        root,
        mount_attr::RDONLY | mount_attr::NOSUID | mount_attr::NODEV,
        true,
    )?;
    SEALED.store(true, Ordering::SeqCst);
    Ok(())
}

/// How a bind mount is restricted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Read-only, nosuid and nodev, applied to the whole tree by [`seal_readonly_tree`]; only
    /// for binds placed before it.
    ReadOnly,
    /// Writable, nosuid and nodev, applied at once.
    Writable,
}

/// Makes `src` (an entry of a pinned rootfs) appear read-only at `target`: directories are
/// bound, small regular files copied, symlinks recreated; anything else is left out.
fn place_readonly(src: &Path, target: &Path) -> Result<(), MountError> {
    const COPY_LIMIT: u64 = 1 << 20;
    let meta = fs::symlink_metadata(src).map_err(err("stat", src))?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let link = fs::read_link(src).map_err(err("readlink", src))?;
        symlink(&link, target).map_err(err("symlink", target))
    } else if ft.is_dir() {
        bind_dir(src, target, Access::ReadOnly)
    } else if ft.is_file() && meta.len() <= COPY_LIMIT {
        fs::copy(src, target).map_err(err("copy", target))?;
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            0o555
        } else {
            0o444
        };
        fs::set_permissions(target, fs::Permissions::from_mode(mode)).map_err(err("chmod", target))
    } else if ft.is_file() {
        fs::File::create(target).map_err(err("create", target))?;
        bind(src, target, Access::ReadOnly)
    } else {
        Ok(())
    }
}

/// Small regular files are copied into the tmpfs; larger ones (measured here: a 33 KiB
/// `ld.so.cache` took 58 µs to copy, a bind 15 µs), directories and symlinks go through
/// [`bind_host_path`]. A file this user cannot read is left out: the job could not have read
/// it through a bind either.
fn copy_or_bind_etc(host: &Path, root: &Path) -> Result<(), MountError> {
    const COPY_LIMIT: u64 = 16 << 10;
    match fs::symlink_metadata(host) {
        Ok(m) if m.is_file() && m.len() <= COPY_LIMIT => {
            let rel = host.strip_prefix("/").unwrap_or(host);
            let target = root.join(rel);
            make_parent(&target, rel)?;
            let mut bytes = Vec::with_capacity(usize::try_from(m.len()).unwrap_or(0) + 1);
            match fs::File::open(host).and_then(|mut f| f.read_to_end(&mut bytes)) {
                Ok(_) => create_file(&target, &bytes, 0o444),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
                Err(e) => Err(err("read", host)(e)),
            }
        }
        _ => bind_host_path(host, root),
    }
}

/// Creates the parent directories of `target` (which is `root/rel`) when `rel` is nested: the
/// root and its `etc` exist already, so the common case costs no system call.
fn make_parent(target: &Path, rel: &Path) -> Result<(), MountError> {
    if rel.components().count() > 2 {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(err("create", parent))?;
        }
    }
    Ok(())
}

/// Where credential files appear in the job's view.
pub const CREDENTIALS_DIR: &str = "/run/credentials";

/// A tool's, credential's or credential file's name as this code accepts it: lower-case
/// letters, digits, `.`, `_`, `-`, at most 63, not starting with `.` (the job spec's name
/// pattern is stricter), so never `.`, `..` or anything with a `/`.
pub fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

fn write_credentials(base: &Path, files: &[crate::spec::CredentialFile]) -> Result<(), MountError> {
    let mut dirs = Vec::new();
    for f in files {
        if !plain_name(&f.dir) || !plain_name(&f.name) {
            return Err(MountError {
                step: "credential file name",
                path: PathBuf::from(format!("{}/{}", f.dir, f.name)),
                source: io::Error::from(io::ErrorKind::InvalidInput),
            });
        }
        let dir = base.join(&f.dir);
        if !dirs.contains(&dir) {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(err("create", &dir))?;
            dirs.push(dir.clone());
        }
        create_file(&dir.join(&f.name), f.contents.as_bytes(), 0o400)?;
    }
    for dir in dirs {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o500)).map_err(err("chmod", &dir))?;
    }
    Ok(())
}

/// Creates `path` (which must not exist) with `contents` and exactly `mode`.
fn create_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), MountError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err("create", path))?;
    f.write_all(contents).map_err(err("write", path))
}

fn write_file(path: &Path, contents: &str) -> Result<(), MountError> {
    create_file(path, contents.as_bytes(), 0o644)
}

/// Makes the host path `host` visible at the same place under `root` (read-only once the root
/// is sealed). Missing host paths are skipped: not every distribution has
/// `/lib64` or `/etc/alternatives`.
fn bind_host_path(host: &Path, root: &Path) -> Result<(), MountError> {
    let meta = match fs::symlink_metadata(host) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err("stat", host)(e)),
    };
    let rel = host.strip_prefix("/").unwrap_or(host);
    let target = root.join(rel);
    make_parent(&target, rel)?;
    if meta.file_type().is_symlink() {
        let link = fs::read_link(host).map_err(err("readlink", host))?;
        return symlink(&link, &target).map_err(err("symlink", &target));
    }
    if meta.is_dir() {
        bind_dir(host, &target, Access::ReadOnly)
    } else {
        fs::File::create(&target).map_err(err("create", &target))?;
        bind(host, &target, Access::ReadOnly)
    }
}

fn bind_dir(src: &Path, target: &Path, access: Access) -> Result<(), MountError> {
    fs::create_dir_all(target).map_err(err("create", target))?;
    bind(src, target, access)
}

fn bind(src: &Path, target: &Path, access: Access) -> Result<(), MountError> {
    if access == Access::ReadOnly && SEALED.load(Ordering::SeqCst) {
        return Err(MountError {
            step: "read-only bind after the root was sealed",
            path: target.to_path_buf(),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        });
    }
    // Recursive, because a user namespace may not reveal what a host submount hides.
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err("bind", target))?;
    match access {
        Access::ReadOnly => Ok(()),
        Access::Writable => restrict(target, mount_attr::NOSUID | mount_attr::NODEV, true),
    }
}

/// Adds mount flags to `target` (and, `recursive`, to every submount a recursive bind
/// brought along) in one call. Flags the host set stay; see [`crate::sys::mount_setattr_add`].
fn restrict(target: &Path, attrs: u64, recursive: bool) -> Result<(), MountError> {
    crate::sys::mount_setattr_add(target, attrs, recursive).map_err(err("set mount flags", target))
}

fn build_dev(dev: &Path) -> Result<(), MountError> {
    mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )
    .map_err(err("mount tmpfs", dev))?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let target = dev.join(name);
        fs::File::create(&target).map_err(err("create", &target))?;
        // Device nodes need a mount without nodev; the bind keeps the host mount's flags,
        // and only these few nodes are reachable. (nosuid and noexec would mean nothing on a
        // device node: only regular files are executed.)
        mount(
            Some(&host),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(err("bind device", &target))?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let p = dev.join(link);
        symlink(to, &p).map_err(err("symlink", &p))?;
    }
    let shm = dev.join("shm");
    fs::create_dir(&shm).map_err(err("create", &shm))?;
    mount(
        Some("tmpfs"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=256m"),
    )
    .map_err(err("mount tmpfs", &shm))?;
    // Nothing more is created in /dev: make the tmpfs itself read-only.
    mount(
        None::<&str>,
        dev,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )
    .map_err(err("remount read-only", dev))
}
