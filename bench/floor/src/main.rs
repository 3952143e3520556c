//! The floor of an install: what no installer of N secrets from F sops files can avoid.
//!
//! ```text
//! install-floor DIR SECRETS FILES VALUE_BYTES [PREVIOUS_DIR]
//! ```
//!
//! Creates DIR (which must not exist), then does exactly:
//! - FILES X25519 operations: unwrapping a sops file's data key from its age stanza costs one;
//! - SECRETS AES-256-GCM operations on VALUE_BYTES each, with the 32-byte nonce sops uses
//!   (one per secret: every value is encrypted on its own in a sops file);
//! - SECRETS files in DIR, each with open(O_CREAT|O_EXCL|O_NOFOLLOW, mode 0) + fchown(0, 0) +
//!   fchmod(0400) + write(VALUE_BYTES) + close, through a directory fd (openat), as raw syscalls.
//!
//! Nothing else: no parsing, no MAC, no key files, no diff, no swap. It prints a checksum of the
//! cryptographic results so that none of the work can be optimised away.
//!
//! With PREVIOUS_DIR (a directory an earlier run wrote), it also does the least a diff against the
//! live generation and pruning it cost: before writing secret i it reads the previous copy
//! (openat + read + close) and compares it, and at the end it unlinks every previous file and the
//! directory. This is not the floor of the issue; the benchmark reports it as a second reference.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use aes_gcm::aead::consts::U32;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Key, Nonce};
use x25519_dalek::{PublicKey, StaticSecret};

/// AES-256-GCM with sops's 32-byte nonce.
type SopsGcm = AesGcm<Aes256, U32>;

/// A cheap deterministic byte stream (splitmix64), so inputs differ without a random source.
struct Bytes(u64);

impl Bytes {
    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        self.fill(&mut a);
        a
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 && args.len() != 6 {
        eprintln!("usage: install-floor DIR SECRETS FILES VALUE_BYTES [PREVIOUS_DIR]");
        std::process::exit(2);
    }
    let dir = PathBuf::from(&args[1]);
    let num = |i: usize| -> usize { args[i].parse().expect("a number") };
    let (secrets, files, size) = (num(2), num(3), num(4));
    let mut rng = Bytes(0x5eed);
    let mut check = [0u8; 32];

    // One X25519 per sops file: the host's identity with the file's ephemeral share.
    let identity = StaticSecret::from(rng.array::<32>());
    let mut data_keys = Vec::with_capacity(files);
    for _ in 0..files {
        let ephemeral = PublicKey::from(rng.array::<32>());
        let shared = identity.diffie_hellman(&ephemeral);
        let shared = shared.as_bytes();
        for (c, s) in check.iter_mut().zip(shared) {
            *c ^= s;
        }
        data_keys.push(SopsGcm::new(Key::<SopsGcm>::from_slice(shared)));
    }

    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let dir_c = CString::new(dir.as_os_str().as_bytes()).expect("no NUL in DIR");
    // SAFETY: plain syscalls on a NUL-terminated path and on fds this function owns.
    let dir_fd = unsafe {
        libc::open(
            dir_c.as_ptr(),
            libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    assert!(dir_fd >= 0, "cannot open {}", dir.display());
    let prev_fd = args.get(5).map(|p| {
        let c = CString::new(p.as_bytes()).expect("no NUL in PREVIOUS_DIR");
        // SAFETY: a plain syscall on a NUL-terminated path.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC) };
        assert!(fd >= 0, "cannot open {p}");
        fd
    });
    let mut old = vec![0u8; size + 1];
    let mut changed = 0usize;
    let mut value = vec![0u8; size];
    let mut name = [0u8; 7]; // "s00000\0"
    for i in 0..secrets {
        // One AES-256-GCM operation per secret, with the data key of its file.
        rng.fill(&mut value);
        let nonce: [u8; 32] = rng.array();
        let cipher = &data_keys[if files == 0 { 0 } else { i * files / secrets.max(1) }];
        let tag = cipher
            .encrypt_in_place_detached(Nonce::<U32>::from_slice(&nonce), b"key:", &mut value)
            .expect("AES-GCM");
        for (c, t) in check.iter_mut().zip(tag.as_slice()) {
            *c ^= t;
        }

        name[0] = b's';
        let mut n = i;
        for d in (1..6).rev() {
            name[d] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        // With a previous generation: read the live copy and compare.
        if let Some(prev) = prev_fd {
            // SAFETY: as above.
            unsafe {
                let fd = libc::openat(
                    prev,
                    name.as_ptr().cast(),
                    libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                );
                assert!(fd >= 0, "cannot open the previous copy of file {i}");
                let mut got = 0;
                loop {
                    let r = libc::read(fd, old[got..].as_mut_ptr().cast(), old.len() - got);
                    assert!(r >= 0, "read");
                    if r == 0 || got + r as usize == old.len() {
                        got += r as usize;
                        break;
                    }
                    got += r as usize;
                }
                libc::close(fd);
                if old[..got] != value[..] {
                    changed += 1;
                }
            }
        }

        // One file: create, fchown, fchmod, write, close.
        // SAFETY: as above; `name` is NUL-terminated and `value` outlives the write.
        unsafe {
            let fd = libc::openat(
                dir_fd,
                name.as_ptr().cast(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0 as libc::c_uint,
            );
            assert!(
                fd >= 0,
                "cannot create file {i}: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(libc::fchown(fd, 0, 0), 0, "fchown");
            assert_eq!(libc::fchmod(fd, 0o400), 0, "fchmod");
            let mut done = 0;
            while done < value.len() {
                let w = libc::write(fd, value[done..].as_ptr().cast(), value.len() - done);
                assert!(w > 0, "write: {}", std::io::Error::last_os_error());
                done += w as usize;
            }
            assert_eq!(libc::close(fd), 0, "close");
        }
    }
    // With a previous generation: prune it.
    if let Some(prev) = prev_fd {
        let mut n_name = [0u8; 7];
        for i in 0..secrets {
            n_name[0] = b's';
            let mut n = i;
            for d in (1..6).rev() {
                n_name[d] = b'0' + (n % 10) as u8;
                n /= 10;
            }
            // SAFETY: as above.
            assert_eq!(
                unsafe { libc::unlinkat(prev, n_name.as_ptr().cast(), 0) },
                0,
                "unlink"
            );
        }
        let p = CString::new(args[5].as_bytes()).unwrap();
        // SAFETY: as above.
        unsafe {
            libc::close(prev);
            assert_eq!(libc::rmdir(p.as_ptr()), 0, "rmdir");
        }
        check[0] ^= changed as u8;
    }
    let hex: String = check[..8].iter().map(|b| format!("{b:02x}")).collect();
    println!("{hex}");
}
