//! Embeds a digest of `src/spec.rs` (the runner-helper protocol: the sandbox spec and the
//! status events) so that `bulwark` and `bulwark-sandbox` from different builds recognise
//! each other and refuse to work together.

fn main() {
    println!("cargo:rerun-if-changed=src/spec.rs");
    let src = std::fs::read("src/spec.rs").expect("src/spec.rs is readable");
    // FNV-1a, 64 bits: an identity for one text, not a security boundary.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in src {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    println!("cargo:rustc-env=BULWARK_SPEC_DIGEST={h:016x}");
}
