//! A streaming tar scanner: fed the bytes of an archive in chunks of any size, it checks the
//! structure (header checksums, sizes, the end-of-archive marker) and lists the entries without
//! keeping their content, except for the few small files a caller asks to capture.
//!
//! Memory is bounded by fixed limits that no image archive comes near (entry count, path length,
//! total path bytes kept, metadata record size, captured bytes), never by the archive's size or
//! content: an archive over a limit is refused as damaged.
//! It understands ustar, GNU long names (`L`/`K`) and PAX extended headers (`x`, `g`), which covers
//! what Go's `archive/tar` (and so every Docker daemon) writes.

use std::collections::HashMap;

const BLOCK: usize = 512;
/// Largest PAX extended header or GNU long-name record accepted (Docker writes a few hundred
/// bytes at most).
pub const META_MAX: u64 = 64 << 10;
/// Longest entry path or link target accepted (Linux's `PATH_MAX`).
pub const PATH_MAX: usize = 4096;
/// Most bytes of entry paths and link targets kept for the whole archive.
pub const PATH_BYTES_MAX: usize = 4 << 20;
/// Most bytes of file content captured in total.
const CAPTURE_TOTAL_MAX: usize = 16 << 20;
/// Most entries listed; beyond that the archive is refused. An image has at most a few hundred
/// layers (127 on overlayfs) and a `docker save` of one image a handful of entries per layer.
pub const ENTRIES_MAX: usize = 20_000;
/// Most links followed when resolving a path.
const LINK_HOPS_MAX: usize = 16;

/// What a listed entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file of this many bytes.
    File { size: u64 },
    /// A directory.
    Directory,
    /// A symbolic link to this target (relative to the link's directory unless absolute).
    Symlink { target: String },
    /// A hard link to this archive path.
    Hardlink { target: String },
    /// Devices, FIFOs and other special files.
    Other,
}

/// A structural problem, with the byte offset where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem} (at byte {offset})")]
pub struct TarError {
    /// Byte offset of the block or record at fault.
    pub offset: u64,
    /// What is wrong.
    pub problem: TarProblem,
}

/// The kinds of structural problems.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TarProblem {
    #[error("header checksum mismatch")]
    Checksum,
    #[error("invalid numeric field {0:?} in header")]
    Number(&'static str),
    #[error("invalid PAX extended header: {0}")]
    Pax(String),
    #[error("metadata record of {0} bytes is too large")]
    MetaTooLarge(u64),
    #[error("an entry follows a single zero block")]
    LoneZeroBlock,
    #[error("non-zero data after the end-of-archive marker")]
    DataAfterEnd,
    #[error("more than {ENTRIES_MAX} entries")]
    TooManyEntries,
    #[error("an entry path or link target of {0} bytes (longer than {PATH_MAX})")]
    PathTooLong(usize),
    #[error("more than {PATH_BYTES_MAX} bytes of entry paths")]
    TooManyPathBytes,
    #[error("archive ends early: {0}")]
    Truncated(&'static str),
}

/// What a complete archive holds.
#[derive(Debug, Default, Clone)]
pub struct TarListing {
    entries: HashMap<String, EntryKind>,
    captured: HashMap<String, Vec<u8>>,
    size: u64,
}

impl TarListing {
    /// The entry at `path` (normalised: no leading `./`, no trailing `/`).
    pub fn entry(&self, path: &str) -> Option<&EntryKind> {
        self.entries.get(normalize(path).as_str())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the archive has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The captured content of a small file, if it was captured.
    pub fn captured(&self, path: &str) -> Option<&[u8]> {
        self.captured.get(normalize(path).as_str()).map(Vec::as_slice)
    }

    /// Total archive size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Follows symbolic and hard links from `path` to a regular file and returns its size, or
    /// `None` if the path, or any link on the way, leads nowhere or to something else.
    pub fn resolve_file(&self, path: &str) -> Option<u64> {
        let mut current = normalize(path);
        for _ in 0..LINK_HOPS_MAX {
            match self.entries.get(&current)? {
                EntryKind::File { size } => return Some(*size),
                EntryKind::Hardlink { target } => current = normalize(target),
                EntryKind::Symlink { target } => {
                    let base = match current.rfind('/') {
                        Some(i) if !target.starts_with('/') => &current[..i],
                        _ => "",
                    };
                    current = join_clean(base, target)?;
                }
                EntryKind::Directory | EntryKind::Other => return None,
            }
        }
        None
    }
}

/// Which files to capture: called with each regular file's path and size.
pub type CaptureFilter = fn(&str, u64) -> bool;

#[derive(Debug)]
enum State {
    /// Collecting the next 512-byte header.
    Header,
    /// Inside an entry's content.
    Content { remaining: u64, padding: u64, sink: Sink },
    /// Skipping the padding after content.
    Padding { remaining: u64 },
    /// After the end-of-archive marker: only zeros may follow.
    End,
}

#[derive(Debug)]
enum Sink {
    Discard,
    Capture { path: String, data: Vec<u8> },
    Meta { kind: u8, data: Vec<u8> },
}

/// Metadata from PAX and GNU headers that applies to the next entry.
#[derive(Debug, Default)]
struct Pending {
    path: Option<String>,
    linkpath: Option<String>,
    size: Option<u64>,
}

/// The streaming scanner. Feed it with [`TarScanner::update`], then call [`TarScanner::finish`].
#[derive(Debug)]
pub struct TarScanner {
    state: State,
    header: [u8; BLOCK],
    header_len: usize,
    zero_blocks: u8,
    end_marker: Option<u64>,
    block_offset: u64,
    offset: u64,
    pending: Pending,
    capture: CaptureFilter,
    captured_total: usize,
    path_bytes: usize,
    listing: TarListing,
}

impl TarScanner {
    /// A scanner that captures the regular files for which `capture` returns true.
    pub fn new(capture: CaptureFilter) -> TarScanner {
        TarScanner {
            state: State::Header,
            header: [0; BLOCK],
            header_len: 0,
            zero_blocks: 0,
            end_marker: None,
            block_offset: 0,
            offset: 0,
            pending: Pending::default(),
            capture,
            captured_total: 0,
            path_bytes: 0,
            listing: TarListing::default(),
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Where the end-of-archive marker begins, once its first block has been consumed.
    pub fn end_marker(&self) -> Option<u64> {
        self.end_marker
    }

    /// How many of the next bytes the scanner does not need to see: the rest of an entry's content
    /// it does not capture, and the padding after it. A reader that can seek may jump over them
    /// with [`TarScanner::skip`].
    pub fn skippable(&self) -> u64 {
        match &self.state {
            State::Content { remaining, padding, sink: Sink::Discard } => remaining + padding,
            State::Padding { remaining } => *remaining,
            _ => 0,
        }
    }

    /// Consumes `n` bytes without looking at them; `n` is at most [`TarScanner::skippable`].
    pub fn skip(&mut self, mut n: u64) {
        assert!(n <= self.skippable(), "skip past what the scanner may skip");
        if let State::Content { remaining, padding, .. } = &mut self.state {
            let here = n.min(*remaining);
            *remaining -= here;
            self.offset += here;
            n -= here;
            if *remaining == 0 {
                let padding = *padding;
                let State::Content { sink, .. } = std::mem::replace(&mut self.state, State::Header) else {
                    unreachable!()
                };
                // A discarded entry: nothing to record at its end.
                debug_assert!(matches!(sink, Sink::Discard));
                if padding > 0 {
                    self.state = State::Padding { remaining: padding };
                }
            }
        }
        if n > 0
            && let State::Padding { remaining } = &mut self.state
        {
            *remaining -= n;
            self.offset += n;
            if *remaining == 0 {
                self.state = State::Header;
            }
        }
    }

    /// Consumes the next bytes of the archive.
    pub fn update(&mut self, mut data: &[u8]) -> Result<(), TarError> {
        while !data.is_empty() {
            let used = match &mut self.state {
                State::Header => {
                    let n = (BLOCK - self.header_len).min(data.len());
                    self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
                    self.header_len += n;
                    if self.header_len == BLOCK {
                        self.header_len = 0;
                        self.block_offset = self.offset + n as u64 - BLOCK as u64;
                        self.on_header()?;
                    }
                    n
                }
                State::Content { remaining, padding, sink } => {
                    let n = usize::try_from(*remaining).unwrap_or(usize::MAX).min(data.len());
                    match sink {
                        Sink::Discard => {}
                        Sink::Capture { data: buf, .. } | Sink::Meta { data: buf, .. } => {
                            buf.extend_from_slice(&data[..n])
                        }
                    }
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        let padding = *padding;
                        let State::Content { sink, .. } = std::mem::replace(&mut self.state, State::Header)
                        else {
                            unreachable!()
                        };
                        self.on_content_end(sink)?;
                        if padding > 0 {
                            self.state = State::Padding { remaining: padding };
                        }
                    }
                    n
                }
                State::Padding { remaining } => {
                    let n = usize::try_from(*remaining).unwrap_or(usize::MAX).min(data.len());
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.state = State::Header;
                    }
                    n
                }
                State::End => {
                    if let Some(i) = data.iter().position(|&b| b != 0) {
                        return Err(self.error_at(self.offset + i as u64, TarProblem::DataAfterEnd));
                    }
                    data.len()
                }
            };
            self.offset += used as u64;
            data = &data[used..];
        }
        Ok(())
    }

    /// Ends the scan: the archive must have ended with its end-of-archive marker.
    pub fn finish(mut self) -> Result<TarListing, TarError> {
        let problem = match &self.state {
            State::End => {
                self.listing.size = self.offset;
                return Ok(self.listing);
            }
            State::Header if self.header_len == 0 && self.zero_blocks == 0 => {
                TarProblem::Truncated("no end-of-archive marker")
            }
            State::Header => TarProblem::Truncated("inside a header or the end-of-archive marker"),
            State::Content { .. } | State::Padding { .. } => {
                TarProblem::Truncated("inside an entry's content")
            }
        };
        Err(self.error_at(self.offset, problem))
    }

    fn error_at(&self, offset: u64, problem: TarProblem) -> TarError {
        TarError { offset, problem }
    }

    fn fail(&self, problem: TarProblem) -> TarError {
        self.error_at(self.block_offset, problem)
    }

    fn on_header(&mut self) -> Result<(), TarError> {
        let h = self.header;
        if h.iter().all(|&b| b == 0) {
            self.zero_blocks += 1;
            if self.zero_blocks == 1 {
                self.end_marker = Some(self.block_offset);
            }
            if self.zero_blocks == 2 {
                self.state = State::End;
            }
            return Ok(());
        }
        if self.zero_blocks == 1 {
            return Err(self.fail(TarProblem::LoneZeroBlock));
        }
        let recorded = parse_number(&h[148..156]).ok_or(self.fail(TarProblem::Number("chksum")))?;
        let unsigned: u64 =
            h.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u64::from(b) }).sum();
        let signed: i64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| if (148..156).contains(&i) { 32 } else { i64::from(b as i8) })
            .sum();
        if recorded != unsigned && i64::try_from(recorded).ok() != Some(signed) {
            return Err(self.fail(TarProblem::Checksum));
        }

        let kind = h[156];
        let header_size = parse_number(&h[124..136]).ok_or(self.fail(TarProblem::Number("size")))?;
        match kind {
            b'x' | b'L' | b'K' => {
                if header_size > META_MAX {
                    return Err(self.fail(TarProblem::MetaTooLarge(header_size)));
                }
                self.begin_content(header_size, Sink::Meta { kind, data: Vec::new() });
                return Ok(());
            }
            b'g' => {
                self.begin_content(header_size, Sink::Discard);
                return Ok(());
            }
            _ => {}
        }

        let pending = std::mem::take(&mut self.pending);
        let path = normalize(&pending.path.unwrap_or_else(|| header_path(&h)));
        let link = pending.linkpath.unwrap_or_else(|| cstr(&h[157..257]));
        let size = pending.size.unwrap_or(header_size);
        let (entry, content) = match kind {
            b'0' | 0 | b'7' => (EntryKind::File { size }, size),
            b'1' => (EntryKind::Hardlink { target: link }, 0),
            b'2' => (EntryKind::Symlink { target: link }, 0),
            b'5' => (EntryKind::Directory, 0),
            b'3' | b'4' | b'6' => (EntryKind::Other, 0),
            _ => (EntryKind::Other, size),
        };
        let sink = match entry {
            EntryKind::File { size }
                if (self.capture)(&path, size)
                    && self.captured_total.saturating_add(size as usize) <= CAPTURE_TOTAL_MAX =>
            {
                self.captured_total += size as usize;
                Sink::Capture { path: path.clone(), data: Vec::with_capacity(size as usize) }
            }
            _ => Sink::Discard,
        };
        if self.listing.entries.len() >= ENTRIES_MAX && !self.listing.entries.contains_key(&path) {
            return Err(self.fail(TarProblem::TooManyEntries));
        }
        let kept = path.len()
            + match &entry {
                EntryKind::Symlink { target } | EntryKind::Hardlink { target } => target.len(),
                _ => 0,
            };
        if let Some(long) = [path.len(), kept - path.len()].into_iter().find(|&n| n > PATH_MAX) {
            return Err(self.fail(TarProblem::PathTooLong(long)));
        }
        self.path_bytes += kept;
        if self.path_bytes > PATH_BYTES_MAX {
            return Err(self.fail(TarProblem::TooManyPathBytes));
        }
        self.listing.captured.remove(&path);
        self.listing.entries.insert(path.clone(), entry);
        if content == 0 {
            // An empty captured file is complete at once.
            if let Sink::Capture { path, data } = sink {
                self.listing.captured.insert(path, data);
            }
        } else {
            self.begin_content(content, sink);
        }
        Ok(())
    }

    fn begin_content(&mut self, size: u64, sink: Sink) {
        // An empty metadata record carries nothing, and an empty file was handled by the caller.
        if size == 0 {
            return;
        }
        let padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.state = State::Content { remaining: size, padding, sink };
    }

    fn on_content_end(&mut self, sink: Sink) -> Result<(), TarError> {
        match sink {
            Sink::Discard => {}
            Sink::Capture { path, data } => {
                self.listing.captured.insert(path, data);
            }
            Sink::Meta { kind: b'L', data } => self.pending.path = Some(cstr(&data)),
            Sink::Meta { kind: b'K', data } => self.pending.linkpath = Some(cstr(&data)),
            Sink::Meta { data, .. } => {
                parse_pax(&data, &mut self.pending).map_err(|e| self.fail(TarProblem::Pax(e)))?
            }
        }
        Ok(())
    }
}

/// The path in a header: the ustar prefix joined with the name.
fn header_path(h: &[u8; BLOCK]) -> String {
    let name = cstr(&h[0..100]);
    // POSIX ustar ("ustar\0" + "00") has a prefix field; GNU ("ustar  \0") uses that area for times.
    if &h[257..263] == b"ustar\0" {
        let prefix = cstr(&h[345..500]);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

/// Parses PAX records (`"<len> <key>=<value>\n"`) into `pending`.
fn parse_pax(mut data: &[u8], pending: &mut Pending) -> Result<(), String> {
    while !data.is_empty() {
        let space = data.iter().position(|&b| b == b' ').ok_or("record without length")?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("bad record length")?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err("record length does not match its content".into());
        }
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or("record without '='")?;
        let key = &record[..eq];
        let value = String::from_utf8_lossy(&record[eq + 1..]).into_owned();
        match key {
            b"path" => pending.path = Some(value),
            b"linkpath" => pending.linkpath = Some(value),
            b"size" => pending.size = Some(value.parse().map_err(|_| format!("bad size {value:?}"))?),
            _ => {}
        }
        data = &data[len..];
    }
    Ok(())
}

/// A NUL-terminated field as a string.
fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// An octal (space or NUL padded) or base-256 numeric field.
fn parse_number(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        if field[0] == 0xff {
            return None; // negative
        }
        let mut value: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    let text: &[u8] = {
        let start = field.iter().position(|&b| b != b' ').unwrap_or(field.len());
        let end = field[start..].iter().position(|&b| b == 0 || b == b' ').map_or(field.len(), |e| start + e);
        &field[start..end]
    };
    if text.is_empty() {
        return Some(0);
    }
    let mut value: u64 = 0;
    for &b in text {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

/// `./a/b/` → `a/b`.
fn normalize(path: &str) -> String {
    let mut p = path;
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    p.trim_end_matches('/').to_owned()
}

/// Joins a relative link target onto `base` inside the archive, resolving `.` and `..`.
/// Returns `None` if it climbs out of the archive root.
fn join_clean(base: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = base.split('/').filter(|s| !s.is_empty()).collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds tar archives for tests, the way Go's `archive/tar` lays them out.
    #[derive(Default)]
    pub(crate) struct TarBuilder {
        pub(crate) bytes: Vec<u8>,
    }

    impl TarBuilder {
        pub(crate) fn header(&mut self, name: &str, kind: u8, size: u64, link: &str) -> &mut Self {
            let mut h = [0u8; BLOCK];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[100..107].copy_from_slice(b"0000644");
            h[108..115].copy_from_slice(b"0000000");
            h[116..123].copy_from_slice(b"0000000");
            h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
            h[136..147].copy_from_slice(b"00000000000");
            h[156] = kind;
            h[157..157 + link.len()].copy_from_slice(link.as_bytes());
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            h[148..156].copy_from_slice(b"        ");
            let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
            h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
            self.bytes.extend_from_slice(&h);
            self
        }

        pub(crate) fn content(&mut self, data: &[u8]) -> &mut Self {
            self.bytes.extend_from_slice(data);
            let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
            self.bytes.extend(std::iter::repeat_n(0, pad));
            self
        }

        pub(crate) fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
            self.header(name, b'0', data.len() as u64, "").content(data)
        }

        pub(crate) fn dir(&mut self, name: &str) -> &mut Self {
            self.header(name, b'5', 0, "")
        }

        pub(crate) fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.header(name, b'2', 0, target)
        }

        pub(crate) fn end(&mut self) -> Vec<u8> {
            self.bytes.extend_from_slice(&[0; 2 * BLOCK]);
            std::mem::take(&mut self.bytes)
        }
    }

    fn capture_json(path: &str, _size: u64) -> bool {
        path.ends_with(".json")
    }

    fn scan_in_chunks(bytes: &[u8], chunk: usize) -> Result<TarListing, TarError> {
        let mut scanner = TarScanner::new(capture_json);
        for piece in bytes.chunks(chunk) {
            scanner.update(piece)?;
        }
        scanner.finish()
    }

    fn sample() -> Vec<u8> {
        TarBuilder::default()
            .dir("abc/")
            .file("abc/layer.tar", &vec![7u8; 1500])
            .file("manifest.json", br#"[{"Config":"x.json"}]"#)
            .symlink("def/layer.tar", "../abc/layer.tar")
            .file("empty.json", b"")
            .end()
    }

    #[test]
    fn lists_entries_in_any_chunking() {
        let bytes = sample();
        for chunk in [1, 7, 511, 512, 513, 4096, bytes.len()] {
            let listing = scan_in_chunks(&bytes, chunk).unwrap();
            assert_eq!(listing.size(), bytes.len() as u64);
            assert_eq!(listing.len(), 5);
            assert_eq!(listing.entry("abc"), Some(&EntryKind::Directory));
            assert_eq!(listing.entry("./abc/layer.tar"), Some(&EntryKind::File { size: 1500 }));
            assert_eq!(listing.captured("manifest.json"), Some(&br#"[{"Config":"x.json"}]"#[..]));
            assert_eq!(listing.captured("empty.json"), Some(&b""[..]));
            assert_eq!(listing.captured("abc/layer.tar"), None);
            assert_eq!(listing.resolve_file("def/layer.tar"), Some(1500));
        }
    }

    /// Scans like a reader that seeks over whatever the scanner may skip, reading `chunk` bytes
    /// at a time otherwise.
    fn scan_skipping(bytes: &[u8], chunk: usize) -> (Result<TarListing, TarError>, usize) {
        let mut scanner = TarScanner::new(capture_json);
        let (mut at, mut read) = (0usize, 0usize);
        while at < bytes.len() {
            let skip = (scanner.skippable() as usize).min(bytes.len() - at);
            if skip > 0 {
                scanner.skip(skip as u64);
                at += skip;
                continue;
            }
            let end = (at + chunk).min(bytes.len());
            if let Err(e) = scanner.update(&bytes[at..end]) {
                return (Err(e), read);
            }
            read += end - at;
            at = end;
        }
        (scanner.finish(), read)
    }

    #[test]
    fn skipping_uncaptured_content_lists_the_same_and_reads_less() {
        let bytes = sample();
        let whole = scan_in_chunks(&bytes, bytes.len()).unwrap();
        for chunk in [1, 100, 512, 700] {
            let (listing, read) = scan_skipping(&bytes, chunk);
            let listing = listing.unwrap();
            assert_eq!(listing.size(), whole.size());
            assert_eq!(listing.captured("manifest.json"), whole.captured("manifest.json"));
            assert_eq!(listing.resolve_file("def/layer.tar"), Some(1500));
            assert!(read < bytes.len() - 1000, "chunk {chunk}: read {read} of {}", bytes.len());
        }
        for cut in (0..bytes.len()).step_by(97) {
            let (listing, _) = scan_skipping(&bytes[..cut], 64);
            assert!(matches!(listing.unwrap_err().problem, TarProblem::Truncated(_)), "cut at {cut}");
        }
    }

    #[test]
    fn the_end_marker_offset_is_known_once_its_first_block_is_read() {
        let bytes = sample();
        let marker = bytes.len() as u64 - 2 * BLOCK as u64;
        let mut scanner = TarScanner::new(capture_json);
        scanner.update(&bytes[..marker as usize + BLOCK - 1]).unwrap();
        assert_eq!(scanner.end_marker(), None);
        scanner.update(&bytes[marker as usize + BLOCK - 1..]).unwrap();
        assert_eq!(scanner.end_marker(), Some(marker));
        scanner.finish().unwrap();
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample();
        for cut in (0..bytes.len()).step_by(97).chain([bytes.len() - 1, bytes.len() - 512]) {
            let err = scan_in_chunks(&bytes[..cut], 64).unwrap_err();
            assert!(matches!(err.problem, TarProblem::Truncated(_)), "cut at {cut}: {err}");
        }
    }

    #[test]
    fn corrupt_header_is_refused() {
        let mut bytes = sample();
        bytes[10] ^= 0x20; // a byte of the first name
        let err = scan_in_chunks(&bytes, 512).unwrap_err();
        assert_eq!(err, TarError { offset: 0, problem: TarProblem::Checksum });
    }

    #[test]
    fn trailing_zeros_are_fine_but_data_is_not() {
        let mut bytes = sample();
        bytes.extend_from_slice(&[0; 9 * BLOCK]);
        scan_in_chunks(&bytes, 1000).unwrap();
        bytes.push(1);
        let err = scan_in_chunks(&bytes, 1000).unwrap_err();
        assert_eq!(err.problem, TarProblem::DataAfterEnd);
    }

    #[test]
    fn lone_zero_block_is_refused() {
        let mut b = TarBuilder::default();
        b.file("a", b"x");
        b.bytes.extend_from_slice(&[0; BLOCK]);
        let bytes = b.file("b", b"y").end();
        assert_eq!(scan_in_chunks(&bytes, 512).unwrap_err().problem, TarProblem::LoneZeroBlock);
    }

    #[test]
    fn pax_and_gnu_long_names() {
        let long = format!("blobs/sha256/{}", "a".repeat(150));
        let record = format!("path={long}\n");
        let pax = format!("{} {record}", record.len() + 4); // 3-digit length + space
        assert_eq!(pax.len(), record.len() + 4);
        let mut b = TarBuilder::default();
        b.header("PaxHeaders/x", b'x', pax.len() as u64, "").content(pax.as_bytes());
        b.file("truncated-name", b"hello");
        let gnu_name = format!("{}.json", "b".repeat(120));
        let mut gnu = gnu_name.clone().into_bytes();
        gnu.push(0);
        b.header("././@LongLink", b'L', gnu.len() as u64, "").content(&gnu);
        b.file("short", b"{}");
        let listing = scan_in_chunks(&b.end(), 100).unwrap();
        assert_eq!(listing.entry(&long), Some(&EntryKind::File { size: 5 }));
        assert_eq!(listing.entry("truncated-name"), None);
        assert_eq!(listing.captured(&gnu_name), Some(&b"{}"[..]));
    }

    /// A PAX record `path=<path>` with its length prefix.
    pub(crate) fn pax_path(path: &str) -> String {
        let record = format!("path={path}\n");
        let mut len = record.len() + 2;
        while format!("{len} {record}").len() != len {
            len += 1;
        }
        format!("{len} {record}")
    }

    #[test]
    fn bounds_refuse_hostile_archives() {
        let oversized_meta = {
            let mut b = TarBuilder::default();
            b.header("PaxHeaders/x", b'x', META_MAX + 1, "");
            b.end()
        };
        assert_eq!(
            scan_in_chunks(&oversized_meta, 4096).unwrap_err().problem,
            TarProblem::MetaTooLarge(META_MAX + 1)
        );
        let long_path = {
            let pax = pax_path(&"p".repeat(PATH_MAX + 1));
            let mut b = TarBuilder::default();
            b.header("PaxHeaders/x", b'x', pax.len() as u64, "").content(pax.as_bytes()).file("x", b"");
            b.end()
        };
        assert_eq!(
            scan_in_chunks(&long_path, 4096).unwrap_err().problem,
            TarProblem::PathTooLong(PATH_MAX + 1)
        );
        let many_path_bytes = {
            let mut b = TarBuilder::default();
            for i in 0..PATH_BYTES_MAX / PATH_MAX + 1 {
                let pax = pax_path(&format!("{i:08}{}", "p".repeat(PATH_MAX - 8)));
                b.header("PaxHeaders/x", b'x', pax.len() as u64, "").content(pax.as_bytes()).dir("d");
            }
            b.end()
        };
        assert_eq!(
            scan_in_chunks(&many_path_bytes, 1 << 16).unwrap_err().problem,
            TarProblem::TooManyPathBytes
        );
        let many_entries = {
            let mut b = TarBuilder::default();
            for i in 0..=ENTRIES_MAX {
                b.dir(&format!("{i}"));
            }
            b.end()
        };
        assert_eq!(scan_in_chunks(&many_entries, 1 << 16).unwrap_err().problem, TarProblem::TooManyEntries);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"00000001750\0"), Some(1000));
        assert_eq!(parse_number(b"     1750 \0"), Some(1000));
        assert_eq!(parse_number(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_number(&[0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]), Some(2 << 32));
        assert_eq!(parse_number(b"0009"), None);
        assert_eq!(parse_number(&[0xff; 12]), None);
    }

    #[test]
    fn links_resolve_inside_the_archive_only() {
        let bytes = TarBuilder::default()
            .file("a/f", b"data")
            .symlink("b/l", "../a/f")
            .symlink("b/abs", "/a/f")
            .symlink("b/out", "../../f")
            .symlink("b/loop", "loop")
            .header("c/h", b'1', 0, "a/f")
            .symlink("b/dir", "../a")
            .end();
        let listing = scan_in_chunks(&bytes, 512).unwrap();
        assert_eq!(listing.resolve_file("b/l"), Some(4));
        assert_eq!(listing.resolve_file("b/abs"), Some(4));
        assert_eq!(listing.resolve_file("c/h"), Some(4));
        assert_eq!(listing.resolve_file("b/out"), None);
        assert_eq!(listing.resolve_file("b/loop"), None);
        assert_eq!(listing.resolve_file("missing"), None);
    }
}
