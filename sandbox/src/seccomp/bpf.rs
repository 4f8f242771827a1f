//! The job's seccomp program: one classic-BPF decision tree over syscall numbers.
//!
//! Why our own emitter and not seccompiler's: seccompiler turns a rule map into one linear
//! chain of comparisons (about 1,400 instructions for our ~280 calls, and a second stacked
//! filter for `clone3`), and installing that was the most expensive system call of a job's
//! start (0.7 ms measured here). Most of the cost is not the JIT but the kernel's action cache:
//! on install it emulates the filter once for every syscall number of both x86 ABIs to find the
//! calls that are always allowed, and a linear chain makes each emulation walk half the list. A
//! balanced tree over intervals of syscall numbers makes every lookup, in the kernel's cache
//! builder and at run time alike, about `2 log2(intervals)` instructions.
//!
//! The shape of the program:
//! 1. load the architecture; anything but this build's (e.g. i386 numbers through `int 0x80`)
//!    kills the process;
//! 2. load the number; on x86_64 an x32 number (bit 30 set) is refused;
//! 3. a binary search over the half-open intervals `[start, next_start)` of numbers that share
//!    a verdict, where each comparison is `jge start` followed by an unconditional `ja` over the
//!    left subtree (cBPF's conditional jumps reach only 255 instructions; `ja` reaches any);
//! 4. at each leaf, the verdict: a return, or for the two calls with argument rules a short
//!    check on the low 32 bits of one argument.
//!
//! The semantics are those of the two seccompiler filters this replaced, and a unit test
//! proves it: it interprets both on every syscall number of both ABIs and on the argument
//! values that matter, and compares the kernel's combined verdicts.

use std::collections::BTreeMap;

pub use seccompiler::sock_filter as Insn;

/// The verdict for one syscall number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Return this `SECCOMP_RET_*` value.
    Ret(u32),
    /// Refuse (with the `refuse` return value) when the low 32 bits of argument `arg` equal any
    /// of `values`; otherwise allow.
    RefuseArgEq {
        /// Argument index, 0 to 5.
        arg: u8,
        /// Refused values, compared as 32 bits.
        values: &'static [u32],
        /// Return value when refused.
        refuse: u32,
    },
    /// Allow only when the low 32 bits of argument `arg` equal one of `values`; otherwise
    /// refuse with `refuse`.
    AllowArgEq {
        /// Argument index, 0 to 5.
        arg: u8,
        /// Allowed values, compared as 32 bits.
        values: &'static [u32],
        /// Return value when refused.
        refuse: u32,
    },
    /// Like [`Verdict::AllowArgEq`], except that when argument `arg` equals `sub`, argument
    /// `sub_arg` decides instead: allowed when it equals one of `sub_values`, else
    /// `sub_refuse` (a socket family, then the protocol within it). All compared as 32 bits.
    AllowArgEqOrSub {
        /// Argument index, 0 to 5.
        arg: u8,
        /// Allowed values of `arg`.
        values: &'static [u32],
        /// Return value when `arg` matches neither `values` nor `sub`.
        refuse: u32,
        /// The value of `arg` that defers to `sub_arg`.
        sub: u32,
        /// Argument index, 0 to 5.
        sub_arg: u8,
        /// Allowed values of `sub_arg`.
        sub_values: &'static [u32],
        /// Return value when `sub_arg` matches none of `sub_values`.
        sub_refuse: u32,
    },
    /// Allow only when, for every `(arg, values)` of `args`, the low 32 bits of argument `arg`
    /// equal one of `values`; otherwise refuse with `refuse` (a socket's family, type and
    /// protocol each from a short list).
    AllowEach {
        /// Argument index (0 to 5) and its allowed values, compared as 32 bits.
        args: &'static [(u8, &'static [u32])],
        /// Return value when any argument is outside its values.
        refuse: u32,
    },
    /// Refuse (with `refuse`) when any bit of `mask` is set in the low 32 bits of argument
    /// `arg`; otherwise allow.
    RefuseArgBits {
        /// Argument index, 0 to 5.
        arg: u8,
        /// Refused bits.
        mask: u32,
        /// Return value when refused.
        refuse: u32,
    },
}

// Classic BPF opcodes (linux/bpf_common.h): class | size | mode, class | op | source.
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0x00) | BPF_W (0x00) | BPF_ABS (0x20)
const BPF_JMP_JA: u16 = 0x05; // BPF_JMP (0x05) | BPF_JA (0x00)
const BPF_JMP_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ (0x10) | BPF_K (0x00)
const BPF_JMP_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE (0x30) | BPF_K
const BPF_JMP_JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET (0x40) | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET (0x06) | BPF_K

/// The kernel refuses programs longer than this (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

// Offsets in `struct seccomp_data`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const OFFSET_ARGS: u32 = 16;

/// Offset of the low 32 bits of argument `arg`.
const fn arg_low(arg: u8) -> u32 {
    let base = OFFSET_ARGS + 8 * arg as u32;
    if cfg!(target_endian = "little") {
        base
    } else {
        base + 4
    }
}

fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

/// The program could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The tree came out longer than the kernel accepts.
    #[error("seccomp program has {0} instructions; the kernel accepts at most {MAX_INSNS}")]
    TooLong(usize),
    /// An argument rule refuses more values than one leaf can jump over.
    #[error("an argument rule lists {0} values; at most 200 fit one leaf")]
    TooManyValues(usize),
    /// An argument index outside 0..=5.
    #[error("argument index {0} out of range")]
    BadArg(u8),
}

/// Builds the program: `rules` give the verdict for listed numbers, everything else gets
/// `default`. `arch` is the `AUDIT_ARCH_*` value of this build; `x32_refusal`, when given, is
/// returned for numbers with the x32 bit set.
pub fn build(
    arch: u32,
    rules: &BTreeMap<u32, Verdict>,
    default: u32,
    x32_refusal: Option<u32>,
) -> Result<Vec<Insn>, BuildError> {
    let mut prog = vec![
        stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        jump(BPF_JMP_JEQ_K, arch, 1, 0),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFFSET_NR),
    ];
    if let Some(refusal) = x32_refusal {
        prog.push(jump(BPF_JMP_JSET_K, X32_SYSCALL_BIT, 0, 1));
        prog.push(stmt(BPF_RET_K, refusal));
    }
    let intervals = intervals(rules, default);
    prog.extend(tree(&intervals)?);
    if prog.len() > MAX_INSNS {
        return Err(BuildError::TooLong(prog.len()));
    }
    Ok(prog)
}

/// The bit that marks an x32 syscall number on x86_64 (`__X32_SYSCALL_BIT`).
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Consecutive numbers with equal plain verdicts merged; `(start, verdict)`, sorted, the first
/// starting at 0 and the last extending to `u32::MAX`.
fn intervals(rules: &BTreeMap<u32, Verdict>, default: u32) -> Vec<(u32, Verdict)> {
    let mut out: Vec<(u32, Verdict)> = Vec::new();
    let mut push = |start: u32, v: Verdict| {
        // Argument rules never merge: each belongs to exactly one number.
        let mergeable = matches!(v, Verdict::Ret(_));
        match out.last() {
            Some((_, last)) if mergeable && *last == v => {}
            _ => out.push((start, v)),
        }
    };
    let mut next = 0u32;
    for (&nr, &v) in rules {
        if nr > next {
            push(next, Verdict::Ret(default));
        }
        push(nr, v);
        next = nr.saturating_add(1);
    }
    if next != 0 && rules.keys().next_back() != Some(&u32::MAX) {
        push(next, Verdict::Ret(default));
    }
    if out.is_empty() {
        out.push((0, Verdict::Ret(default)));
    }
    out
}

/// A balanced search over `intervals` (the number is in the accumulator).
fn tree(intervals: &[(u32, Verdict)]) -> Result<Vec<Insn>, BuildError> {
    if let [(_, verdict)] = intervals {
        return leaf(*verdict);
    }
    let mid = intervals.len() / 2;
    let left = tree(&intervals[..mid])?;
    let right = tree(&intervals[mid..])?;
    let over_left = u32::try_from(left.len()).map_err(|_| BuildError::TooLong(left.len()))?;
    let mut out = Vec::with_capacity(2 + left.len() + right.len());
    // nr >= start of the right half: fall through to the `ja` that skips the left subtree;
    // otherwise skip the `ja` and continue into the left subtree.
    out.push(jump(BPF_JMP_JGE_K, intervals[mid].0, 0, 1));
    out.push(stmt(BPF_JMP_JA, over_left));
    out.extend(left);
    out.extend(right);
    Ok(out)
}

/// `ret on_match` when the low 32 bits of argument `arg` equal one of `values`, else
/// `ret otherwise`.
fn arg_in(arg: u8, values: &[u32], on_match: u32, otherwise: u32) -> Result<Vec<Insn>, BuildError> {
    let mut out = arg_in_or_ret(arg, values, otherwise)?;
    out.push(stmt(BPF_RET_K, on_match));
    Ok(out)
}

/// Falls through past its end when the low 32 bits of argument `arg` equal one of `values`,
/// else `ret otherwise`.
fn arg_in_or_ret(arg: u8, values: &[u32], otherwise: u32) -> Result<Vec<Insn>, BuildError> {
    if arg > 5 {
        return Err(BuildError::BadArg(arg));
    }
    let n = u8::try_from(values.len())
        .ok()
        .filter(|n| *n <= 200)
        .ok_or(BuildError::TooManyValues(values.len()))?;
    // ld arg; jeq v0 -> past; ...; ret otherwise; past:
    let mut out = vec![stmt(BPF_LD_W_ABS, arg_low(arg))];
    for (i, v) in values.iter().enumerate() {
        // From the jeq at index i (counting jeqs from 0), the end is n - i ahead.
        out.push(jump(BPF_JMP_JEQ_K, *v, n - i as u8, 0));
    }
    out.push(stmt(BPF_RET_K, otherwise));
    Ok(out)
}

fn leaf(verdict: Verdict) -> Result<Vec<Insn>, BuildError> {
    Ok(match verdict {
        Verdict::Ret(r) => vec![stmt(BPF_RET_K, r)],
        Verdict::RefuseArgEq {
            arg,
            values,
            refuse,
        } => arg_in(arg, values, refuse, libc::SECCOMP_RET_ALLOW)?,
        Verdict::AllowArgEq {
            arg,
            values,
            refuse,
        } => arg_in(arg, values, libc::SECCOMP_RET_ALLOW, refuse)?,
        Verdict::AllowArgEqOrSub {
            arg,
            values,
            refuse,
            sub,
            sub_arg,
            sub_values,
            sub_refuse,
        } => {
            // ld arg; jeq sub -> SUB; jeq v0 -> allow; ...; ret refuse; allow: ret allow;
            // SUB: the sub-argument's own check.
            let mut out = arg_in(arg, values, libc::SECCOMP_RET_ALLOW, refuse)?;
            let n =
                u8::try_from(values.len()).map_err(|_| BuildError::TooManyValues(values.len()))?;
            // From the inserted jeq, the sub block starts after the n value jumps and the two
            // returns.
            out.insert(1, jump(BPF_JMP_JEQ_K, sub, n + 2, 0));
            out.extend(arg_in(
                sub_arg,
                sub_values,
                libc::SECCOMP_RET_ALLOW,
                sub_refuse,
            )?);
            out
        }
        Verdict::AllowEach { args, refuse } => {
            let mut out = Vec::new();
            for (arg, values) in args {
                out.extend(arg_in_or_ret(*arg, values, refuse)?);
            }
            out.push(stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW));
            out
        }
        Verdict::RefuseArgBits { arg, mask, refuse } => {
            if arg > 5 {
                return Err(BuildError::BadArg(arg));
            }
            vec![
                stmt(BPF_LD_W_ABS, arg_low(arg)),
                jump(BPF_JMP_JSET_K, mask, 1, 0),
                stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW),
                stmt(BPF_RET_K, refuse),
            ]
        }
    })
}

/// A classic-BPF interpreter for seccomp programs, for tests: returns the program's verdict
/// for `(nr, arch, args)`, or `None` for a program the kernel would refuse (a jump out of
/// range, an opcode seccomp does not allow, falling off the end).
#[cfg(test)]
pub fn run(prog: &[Insn], nr: u32, arch: u32, args: [u64; 6]) -> Option<u32> {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_ne_bytes());
    data[4..8].copy_from_slice(&arch.to_ne_bytes());
    for (i, a) in args.iter().enumerate() {
        let o = 16 + 8 * i;
        data[o..o + 8].copy_from_slice(&a.to_ne_bytes());
    }
    let mut acc: u32 = 0;
    let mut pc = 0usize;
    loop {
        let insn = prog.get(pc)?;
        let k = insn.k;
        match insn.code {
            BPF_LD_W_ABS => {
                let o = usize::try_from(k).ok()?;
                if o % 4 != 0 || o + 4 > data.len() {
                    return None;
                }
                acc = u32::from_ne_bytes(data[o..o + 4].try_into().ok()?);
                pc += 1;
            }
            BPF_RET_K => return Some(k),
            BPF_JMP_JA => pc = pc + 1 + usize::try_from(k).ok()?,
            BPF_JMP_JEQ_K | BPF_JMP_JGE_K | BPF_JMP_JSET_K => {
                let taken = match insn.code {
                    BPF_JMP_JEQ_K => acc == k,
                    BPF_JMP_JGE_K => acc >= k,
                    _ => acc & k != 0,
                };
                pc += 1 + usize::from(if taken { insn.jt } else { insn.jf });
            }
            // seccompiler's programs also use `jgt` and `and`.
            0x25 => pc += 1 + usize::from(if acc > k { insn.jt } else { insn.jf }),
            0x54 => {
                acc &= k;
                pc += 1;
            }
            _ => return None,
        }
        if pc >= prog.len() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARCH: u32 = 0xC000_003E;
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;

    #[test]
    fn a_single_rule_splits_the_number_line_in_three() {
        let rules = BTreeMap::from([(5, Verdict::Ret(libc::SECCOMP_RET_ALLOW))]);
        let prog = build(ARCH, &rules, EPERM, None).unwrap();
        for (nr, want) in [
            (0, EPERM),
            (4, EPERM),
            (5, libc::SECCOMP_RET_ALLOW),
            (6, EPERM),
            (u32::MAX, EPERM),
        ] {
            assert_eq!(run(&prog, nr, ARCH, [0; 6]), Some(want), "nr {nr}");
        }
        assert_eq!(
            run(&prog, 5, 0x4000_0003, [0; 6]),
            Some(libc::SECCOMP_RET_KILL_PROCESS),
            "foreign architecture"
        );
    }

    #[test]
    fn rules_at_the_ends_of_the_number_line() {
        let allow = Verdict::Ret(libc::SECCOMP_RET_ALLOW);
        let rules = BTreeMap::from([(0, allow), (u32::MAX, allow)]);
        let prog = build(ARCH, &rules, EPERM, None).unwrap();
        assert_eq!(run(&prog, 0, ARCH, [0; 6]), Some(libc::SECCOMP_RET_ALLOW));
        assert_eq!(run(&prog, 1, ARCH, [0; 6]), Some(EPERM));
        assert_eq!(
            run(&prog, u32::MAX, ARCH, [0; 6]),
            Some(libc::SECCOMP_RET_ALLOW)
        );
        let empty = build(ARCH, &BTreeMap::new(), EPERM, None).unwrap();
        assert_eq!(run(&empty, 7, ARCH, [0; 6]), Some(EPERM));
    }

    #[test]
    fn every_number_of_a_dense_random_table_gets_its_verdict() {
        // A deterministic pseudo-random table over 0..1200, dense enough that subtrees exceed
        // the 255-instruction reach of conditional jumps.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rules = BTreeMap::new();
        for nr in 0..1200u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 4 {
                0 => {
                    rules.insert(nr, Verdict::Ret(libc::SECCOMP_RET_ALLOW));
                }
                1 => {
                    rules.insert(nr, Verdict::Ret(libc::SECCOMP_RET_ERRNO | (nr % 100)));
                }
                _ => {}
            }
        }
        let prog = build(ARCH, &rules, EPERM, Some(EPERM)).unwrap();
        for nr in 0..1300u32 {
            let want = match rules.get(&nr) {
                Some(Verdict::Ret(r)) => *r,
                _ => EPERM,
            };
            assert_eq!(run(&prog, nr, ARCH, [0; 6]), Some(want), "nr {nr}");
            assert_eq!(
                run(&prog, nr | X32_SYSCALL_BIT, ARCH, [0; 6]),
                Some(EPERM),
                "x32 nr {nr}"
            );
        }
    }

    #[test]
    fn argument_rules_compare_the_low_32_bits() {
        let rules = BTreeMap::from([
            (
                16,
                Verdict::RefuseArgEq {
                    arg: 1,
                    values: &[0x5412, 0x541C],
                    refuse: EPERM,
                },
            ),
            (
                56,
                Verdict::RefuseArgBits {
                    arg: 0,
                    mask: 0x1000_0000,
                    refuse: EPERM,
                },
            ),
            (
                41,
                Verdict::AllowArgEq {
                    arg: 0,
                    values: &[1, 2, 10],
                    refuse: EPERM,
                },
            ),
            (
                42,
                Verdict::AllowArgEqOrSub {
                    arg: 0,
                    values: &[1, 2],
                    refuse: EPERM,
                    sub: 16,
                    sub_arg: 2,
                    sub_values: &[0, 4],
                    sub_refuse: EPERM + 1,
                },
            ),
        ]);
        let prog = build(ARCH, &rules, EPERM, None).unwrap();
        let allow = Some(libc::SECCOMP_RET_ALLOW);
        assert_eq!(run(&prog, 16, ARCH, [0, 0x5412, 0, 0, 0, 0]), Some(EPERM));
        assert_eq!(
            run(&prog, 16, ARCH, [0, 0xdead_0000_0000_5412, 0, 0, 0, 0]),
            Some(EPERM)
        );
        assert_eq!(run(&prog, 16, ARCH, [0, 0x541C, 0, 0, 0, 0]), Some(EPERM));
        assert_eq!(run(&prog, 16, ARCH, [0x5412, 0x5413, 0, 0, 0, 0]), allow);
        for family in [1, 2, 10, 2 | (1 << 40)] {
            assert_eq!(
                run(&prog, 41, ARCH, [family, 1, 0, 0, 0, 0]),
                allow,
                "{family}"
            );
        }
        for family in [0, 3, 16, 40, 0x1_0000_0028] {
            assert_eq!(
                run(&prog, 41, ARCH, [family, 1, 0, 0, 0, 0]),
                Some(EPERM),
                "{family}"
            );
        }
        for (family, protocol, want) in [
            (1, 99, allow),
            (2, 0, allow),
            (1 | (1 << 40), 5, allow),
            (3, 0, Some(EPERM)),
            (10, 0, Some(EPERM)),
            (16, 0, allow),
            (16, 4, allow),
            (16, 4 | (1 << 33), allow),
            (16, 12, Some(EPERM + 1)),
            (16, 9, Some(EPERM + 1)),
            (16 | (1 << 35), 12, Some(EPERM + 1)),
        ] {
            assert_eq!(
                run(&prog, 42, ARCH, [family, 3, protocol, 0, 0, 0]),
                want,
                "family {family:#x} protocol {protocol:#x}"
            );
        }
        assert_eq!(
            run(&prog, 56, ARCH, [0x1000_0011, 0, 0, 0, 0, 0]),
            Some(EPERM)
        );
        assert_eq!(
            run(&prog, 56, ARCH, [0x11 | (1 << 60), 0, 0, 0, 0, 0]),
            allow
        );
        assert_eq!(
            run(&prog, 57, ARCH, [0x1000_0011, 0, 0, 0, 0, 0]),
            Some(EPERM)
        );
    }

    #[test]
    fn an_allow_each_rule_needs_every_argument_in_its_list() {
        let rules = BTreeMap::from([(
            41,
            Verdict::AllowEach {
                args: &[(0, &[2, 10]), (1, &[1, 0x801]), (2, &[0, 6])],
                refuse: EPERM,
            },
        )]);
        let prog = build(ARCH, &rules, libc::SECCOMP_RET_ALLOW, None).unwrap();
        let allow = Some(libc::SECCOMP_RET_ALLOW);
        for (args, want) in [
            ([2, 1, 0], allow),
            ([10, 0x801, 6], allow),
            ([2 | (1 << 40), 1 | (1 << 33), 6 | (1 << 50)], allow),
            ([1, 1, 0], Some(EPERM)),
            ([2, 2, 0], Some(EPERM)),
            ([10, 1, 17], Some(EPERM)),
            ([16, 3, 0], Some(EPERM)),
            ([2, 0x802, 6], Some(EPERM)),
        ] {
            assert_eq!(
                run(&prog, 41, ARCH, [args[0], args[1], args[2], 0, 0, 0]),
                want,
                "{args:x?}"
            );
        }
        assert_eq!(run(&prog, 42, ARCH, [1, 2, 17, 0, 0, 0]), allow);
        let empty = BTreeMap::from([(
            41,
            Verdict::AllowEach {
                args: &[],
                refuse: EPERM,
            },
        )]);
        let prog = build(ARCH, &empty, EPERM, None).unwrap();
        assert_eq!(run(&prog, 41, ARCH, [0; 6]), allow);
    }

    #[test]
    fn bad_rules_are_refused() {
        let rules = BTreeMap::from([(
            1,
            Verdict::RefuseArgBits {
                arg: 6,
                mask: 1,
                refuse: EPERM,
            },
        )]);
        assert!(matches!(
            build(ARCH, &rules, EPERM, None),
            Err(BuildError::BadArg(6))
        ));
    }
}
