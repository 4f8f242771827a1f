//! `bulwark-sandbox`: the sandbox helper, started by `bulwark` once per job.
//!
//! A binary of its own rather than `bulwark` re-executed, because it is exec'd on every job's
//! critical path: this one links only the sandbox crate (about a tenth of the runner's size), so
//! the dynamic loader has far fewer relocations to apply and the kernel far fewer pages to fault
//! in. It is not meant to be run by hand; see `bulwark_sandbox::helper` for what it does.
#![forbid(unsafe_code)]

fn main() {
    // `--ownership`: hand a workspace between the runner's ids and a job's subordinate ids
    // (subuid mode; see `bulwark_sandbox::subid`). `--kill-uid UID`: kill every process of a
    // job uid, started as that uid (root mode; see `bulwark_sandbox::uid_sweep`). `--confine`:
    // exec a program the runner runs on the host (git) under Landlock and no_new_privs (see
    // `bulwark_sandbox::confine`). Anything else is the job helper.
    let mut args = std::env::args_os().skip(1);
    match args.next().as_deref().and_then(|a| a.to_str()) {
        Some("--ownership") => bulwark_sandbox::subid::ownership_main(),
        Some("--kill-uid") => bulwark_sandbox::uid_sweep::kill_uid_main(args.next().as_deref()),
        Some("--confine") => bulwark_sandbox::confine::confine_main(args.collect()),
        _ => bulwark_sandbox::helper::main(),
    }
}
