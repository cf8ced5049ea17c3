//! Hostile input: oversized records, tar bombs, special files as lists, references too long for a
//! file name, odd `--dir` values. Each attack must be refused in bounded memory, before any work
//! where it can be.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{preloader, run, unique};

const QUICK: Duration = Duration::from_secs(30);
/// Peak memory `verify` over hostile archives may reach (measured: 15 MiB; 11 MiB on an empty
/// directory). Without the bounds the same files took hundreds of MB (or the size of the record).
const RSS_BOUND_KIB: i64 = 40 << 10;
/// The same for `load`, which also connects to the daemon: 18 MiB when measured alone, but one
/// full parallel suite run on a loaded machine saw 94 MiB (cause not found), so the bound only
/// shows memory does not follow the 1.5 GiB record.
const LOAD_RSS_BOUND_KIB: i64 = 192 << 10;

fn nowhere() -> String {
    format!("unix:///tmp/{}.sock", unique("no-daemon"))
}

/// Runs `cmd` to the end with its output in files and returns (exit code, stdout, stderr, peak
/// RSS in KiB) as the kernel accounted it (`wait4` reaps the child).
#[allow(clippy::zombie_processes)]
fn run_measured(mut cmd: Command) -> (i32, String, String, i64) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    let child =
        cmd.stdin(Stdio::null()).stdout(out.reopen().unwrap()).stderr(err.reopen().unwrap()).spawn().unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    assert!(libc::WIFEXITED(status), "killed by a signal: {status}");
    let read = |f: &tempfile::NamedTempFile| std::fs::read_to_string(f.path()).unwrap();
    (libc::WEXITSTATUS(status), read(&out), read(&err), usage.ru_maxrss)
}

/// A ustar header block (with a correct checksum) for a test archive.
fn header(out: &mut impl Write, name: &str, kind: u8, size: u64) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    out.write_all(&h).unwrap();
}

fn content(out: &mut impl Write, data: &[u8]) {
    out.write_all(data).unwrap();
    out.write_all(&vec![0u8; (512 - data.len() % 512) % 512]).unwrap();
}

fn file(out: &mut impl Write, name: &str, data: &[u8]) {
    header(out, name, b'0', data.len() as u64);
    content(out, data);
}

fn end(out: &mut impl Write) {
    out.write_all(&[0u8; 1024]).unwrap();
}

fn pax_path(path: &str) -> String {
    let record = format!("path={path}\n");
    let mut len = record.len() + 2;
    while format!("{len} {record}").len() != len {
        len += 1;
    }
    format!("{len} {record}")
}

/// A small complete classic image archive (its config named by digest, as `docker save` does).
pub(crate) fn valid_archive(path: &Path) {
    let mut out = BufWriter::new(File::create(path).unwrap());
    let config = format!("{}.json", "a".repeat(64));
    let manifest = format!(r#"[{{"Config":"{config}","RepoTags":["x:1"],"Layers":["l/layer.tar"]}}]"#);
    file(&mut out, "manifest.json", manifest.as_bytes());
    file(&mut out, &config, b"{}");
    file(&mut out, "l/layer.tar", &[0u8; 1024]);
    end(&mut out);
}

/// 600 PAX headers each naming a 60 KiB path: 37 MB that the scanner once kept whole.
fn pax_bomb(path: &Path) {
    let mut out = BufWriter::new(File::create(path).unwrap());
    for i in 0..600 {
        let pax = pax_path(&format!("{i:04}/{}", "p".repeat(60 << 10)));
        header(&mut out, "PaxHeaders/x", b'x', pax.len() as u64);
        content(&mut out, pax.as_bytes());
        header(&mut out, "x", b'5', 0);
    }
    end(&mut out);
}

/// 150 000 empty entries (77 MB): a million once took 253 MB.
fn entry_bomb(path: &Path) {
    let mut out = BufWriter::new(File::create(path).unwrap());
    for i in 0..150_000 {
        header(&mut out, &format!("d{i}/"), b'5', 0);
    }
    end(&mut out);
}

/// A `manifest.json` of 100 MB.
fn manifest_bomb(path: &Path) {
    let mut out = BufWriter::new(File::create(path).unwrap());
    let size = 100u64 << 20;
    header(&mut out, "manifest.json", b'0', size);
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..100 {
        out.write_all(&chunk).unwrap();
    }
    end(&mut out);
}

#[test]
fn hostile_archives_and_records_are_damaged_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let team = dir.path().join("team");
    std::fs::create_dir(&team).unwrap();
    valid_archive(&team.join("record_1.tar"));
    // A record of 1.5 GiB (sparse): it was read whole.
    File::create(team.join("record_1.tar.json")).unwrap().set_len(3 << 29).unwrap();
    pax_bomb(&team.join("pax_1.tar"));
    entry_bomb(&team.join("entries_1.tar"));
    manifest_bomb(&team.join("manifest_1.tar"));

    let (code, stdout, stderr, rss) =
        run_measured(preloader(&["verify", "--dir", dir.path().to_str().unwrap()]));
    eprintln!("verify over hostile archives: peak RSS {} KiB\n{stdout}", rss);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name} not in:\n{stdout}"))
            .to_owned()
    };
    let record = line("record_1.tar");
    assert!(record.starts_with("damaged") && record.contains("larger than 65536 bytes"), "{record}");
    let pax = line("pax_1.tar");
    assert!(pax.starts_with("invalid") && pax.contains("longer than 4096"), "{pax}");
    let entries = line("entries_1.tar");
    assert!(entries.starts_with("invalid") && entries.contains("more than 20000 entries"), "{entries}");
    let manifest = line("manifest_1.tar");
    assert!(manifest.contains("manifest.json has 104857600 bytes"), "{manifest}");
    assert!(rss < RSS_BOUND_KIB, "verify peaked at {rss} KiB");

    // `load` checks before it sends: nothing hostile reaches the daemon, and memory stays bounded.
    let host = format!(
        "unix://{}",
        std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(str::to_owned))
            .unwrap_or_else(|| "/var/run/docker.sock".into())
    );
    crate::support::ensure_docker();
    let (code, stdout, stderr, rss) = run_measured(preloader(&[
        "load",
        "--strict",
        "--dir",
        dir.path().to_str().unwrap(),
        "--docker-host",
        &host,
        "team/record_1.tar",
        "team/pax_1.tar",
        "team/entries_1.tar",
    ]));
    eprintln!("load of hostile archives: peak RSS {} KiB\n{stdout}", rss);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("damaged")).count(), 3, "{stdout}");
    assert!(rss < LOAD_RSS_BOUND_KIB, "load peaked at {rss} KiB");
}

#[test]
fn images_file_that_is_not_a_small_regular_file_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("images.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let archives = dir.path().join("archives");
    let host = nowhere();
    for list in ["/dev/zero", fifo.to_str().unwrap()] {
        for command in ["warm", "path"] {
            let mut args = vec![command, "--images-file", list];
            if command == "warm" {
                args.extend(["--dir", archives.to_str().unwrap(), "--docker-host", &host]);
            }
            let out = run(preloader(&args), QUICK);
            out.assert_code(2);
            assert!(out.stderr.contains(list) && out.stderr.contains("not a regular file"), "{}", out.stderr);
            assert!(out.elapsed < Duration::from_secs(10), "refused at once");
        }
    }
    assert!(!archives.exists(), "nothing written");
}

#[test]
fn references_too_long_for_a_file_name_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let archives = dir.path().join("archives");
    // Valid references: a 230-character name and a 128-character tag.
    let long_name = format!("team/{}:1", "n".repeat(225));
    let long_tag = format!("team/{}:{}", "a".repeat(100), "t".repeat(128));
    let host = nowhere();
    for reference in [&long_name, &long_tag] {
        let out = run(
            preloader(&["warm", "--dir", archives.to_str().unwrap(), "--docker-host", &host, reference]),
            QUICK,
        );
        out.assert_code(2);
        assert!(out.stderr.contains("too long for an archive name"), "{}", out.stderr);
        let out = run(preloader(&["path", reference]), QUICK);
        out.assert_code(2);
        assert!(out.stdout.is_empty(), "path prints no path that cannot exist: {}", out.stdout);
    }
    assert!(!archives.exists(), "nothing written");
}

#[test]
fn odd_directories_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let out = run(preloader(&["verify", "--dir", missing.to_str().unwrap()]), QUICK);
    out.assert_code(2);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
    let regular = dir.path().join("regular");
    std::fs::write(&regular, b"x").unwrap();
    let host = nowhere();
    for args in [
        vec!["verify", "--dir", regular.to_str().unwrap()],
        vec!["warm", "--dir", regular.to_str().unwrap(), "--docker-host", &host, "a:1"],
        vec!["load", "--dir", regular.to_str().unwrap(), "--docker-host", &host, "--all"],
    ] {
        let out = run(preloader(&args), QUICK);
        out.assert_code(2);
        assert!(out.stderr.contains("is not a directory"), "{args:?}: {}", out.stderr);
    }
}
