//! `bulwark-sandbox`: the sandbox helper, started by `bulwark` once per job.
//!
//! A binary of its own rather than `bulwark` re-executed, because it is exec'd on every job's
//! critical path: this one links only the sandbox crate (about a tenth of the runner's size), so
//! the dynamic loader has far fewer relocations to apply and the kernel far fewer pages to fault
//! in. It is not meant to be run by hand; see `bulwark_sandbox::helper` for what it does.
#![forbid(unsafe_code)]

fn main() {
    // `--ownership`: hand a workspace between the runner's ids and a job's subordinate ids
    // (subuid mode; see `bulwark_sandbox::subid`). Anything else is the job helper.
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new("--ownership")) {
        bulwark_sandbox::subid::ownership_main()
    }
    bulwark_sandbox::helper::main()
}
