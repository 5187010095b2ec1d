//! The bundle's zip, written as a stream: each file's bytes are already in the blob store
//! (deflated as the zip keeps them, their CRC-32 and lengths known), so the zip is its
//! headers around copies of them, and never whole in memory.
//!
//! ZIP64 fields are written where a length, an offset or the number of entries passes
//! what the classic fields hold (APPNOTE 6.3, sections 4.3.7-4.3.16 and 4.5.3).

/// One entry as the central directory lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub deflated: bool,
    pub crc32: u32,
    pub bytes: u64,
    pub stored_bytes: u64,
    /// Where its local header starts.
    pub offset: u64,
}

const U32_MAX: u64 = 0xFFFF_FFFF;
/// General purpose flag 11: names are UTF-8.
const UTF8: u16 = 1 << 11;

/// An MS-DOS date and time (the zip's own), from a UTC time.
pub fn dos_time(t: chrono::DateTime<chrono::Utc>) -> (u16, u16) {
    use chrono::{Datelike, Timelike};
    let year = u16::try_from(t.year().clamp(1980, 2107) - 1980).unwrap_or(0);
    let date = (year << 9) | ((t.month() as u16) << 5) | t.day() as u16;
    let time = ((t.hour() as u16) << 11) | ((t.minute() as u16) << 5) | (t.second() as u16 / 2);
    (time, date)
}

fn method(entry: &Entry) -> u16 {
    if entry.deflated { 8 } else { 0 }
}

/// The local header that comes before an entry's bytes.
pub fn local_header(entry: &Entry, (time, date): (u16, u16)) -> Vec<u8> {
    let big = entry.bytes >= U32_MAX || entry.stored_bytes >= U32_MAX;
    let mut out = Vec::with_capacity(30 + entry.name.len() + 20);
    out.extend(0x0403_4b50u32.to_le_bytes());
    out.extend(if big { 45u16 } else { 20u16 }.to_le_bytes());
    out.extend(UTF8.to_le_bytes());
    out.extend(method(entry).to_le_bytes());
    out.extend(time.to_le_bytes());
    out.extend(date.to_le_bytes());
    out.extend(entry.crc32.to_le_bytes());
    if big {
        out.extend(u32::MAX.to_le_bytes());
        out.extend(u32::MAX.to_le_bytes());
    } else {
        out.extend((entry.stored_bytes as u32).to_le_bytes());
        out.extend((entry.bytes as u32).to_le_bytes());
    }
    out.extend((entry.name.len() as u16).to_le_bytes());
    out.extend(if big { 20u16 } else { 0u16 }.to_le_bytes());
    out.extend(entry.name.as_bytes());
    if big {
        out.extend(1u16.to_le_bytes());
        out.extend(16u16.to_le_bytes());
        out.extend(entry.bytes.to_le_bytes());
        out.extend(entry.stored_bytes.to_le_bytes());
    }
    out
}

/// The central directory and the end records, for entries that end at `offset`.
pub fn central_directory(entries: &[Entry], offset: u64, (time, date): (u16, u16)) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let mut extra = Vec::new();
        let wide = |v: u64, extra: &mut Vec<u8>| {
            if v >= U32_MAX {
                extra.extend(v.to_le_bytes());
                u32::MAX
            } else {
                v as u32
            }
        };
        let bytes = wide(entry.bytes, &mut extra);
        let stored = wide(entry.stored_bytes, &mut extra);
        let at = wide(entry.offset, &mut extra);
        let extra = if extra.is_empty() {
            extra
        } else {
            let mut field = Vec::with_capacity(4 + extra.len());
            field.extend(1u16.to_le_bytes());
            field.extend((extra.len() as u16).to_le_bytes());
            field.extend(extra);
            field
        };
        let needed: u16 = if extra.is_empty() { 20 } else { 45 };
        out.extend(0x0201_4b50u32.to_le_bytes());
        out.extend((0x0300 | 45u16).to_le_bytes()); // made by: Unix, APPNOTE 4.5
        out.extend(needed.to_le_bytes());
        out.extend(UTF8.to_le_bytes());
        out.extend(method(entry).to_le_bytes());
        out.extend(time.to_le_bytes());
        out.extend(date.to_le_bytes());
        out.extend(entry.crc32.to_le_bytes());
        out.extend(stored.to_le_bytes());
        out.extend(bytes.to_le_bytes());
        out.extend((entry.name.len() as u16).to_le_bytes());
        out.extend((extra.len() as u16).to_le_bytes());
        out.extend(0u16.to_le_bytes()); // comment
        out.extend(0u16.to_le_bytes()); // disk
        out.extend(0u16.to_le_bytes()); // internal attributes
        out.extend((0o100_644u32 << 16).to_le_bytes()); // a regular file, rw-r--r--
        out.extend(at.to_le_bytes());
        out.extend(entry.name.as_bytes());
        out.extend(extra);
    }
    let size = out.len() as u64;
    let count = entries.len() as u64;
    if count >= 0xFFFF || size >= U32_MAX || offset >= U32_MAX {
        let end64 = offset + size;
        out.extend(0x0606_4b50u32.to_le_bytes());
        out.extend(44u64.to_le_bytes());
        out.extend((0x0300 | 45u16).to_le_bytes());
        out.extend(45u16.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(count.to_le_bytes());
        out.extend(count.to_le_bytes());
        out.extend(size.to_le_bytes());
        out.extend(offset.to_le_bytes());
        out.extend(0x0706_4b50u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(end64.to_le_bytes());
        out.extend(1u32.to_le_bytes());
    }
    let count16 = u16::try_from(count).unwrap_or(u16::MAX);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend(count16.to_le_bytes());
    out.extend(count16.to_le_bytes());
    out.extend((size.min(U32_MAX) as u32).to_le_bytes());
    out.extend((offset.min(U32_MAX) as u32).to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

/// An entry read back from a zip's central directory (for `cairn import`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub deflated: bool,
    pub crc32: u32,
    pub bytes: u64,
    pub stored_bytes: u64,
    /// Where the entry's bytes start.
    pub data_offset: u64,
}

/// Read the entries of a zip whose whole length is `len`, reading ranges with `read_at`.
pub fn list(
    len: u64,
    read_at: &mut dyn FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<Vec<Listed>> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let tail_len = len.min(22 + 0xFFFF);
    let tail = read_at(len - tail_len, tail_len as usize)?;
    let end = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| tail[i..i + 4] == 0x0605_4b50u32.to_le_bytes())
        .ok_or_else(|| bad("not a zip: no end of central directory"))?;
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u64_at = |b: &[u8], i: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(v)
    };
    let mut count = u64::from(u16_at(&tail, end + 10));
    let mut size = u64::from(u32_at(&tail, end + 12));
    let mut offset = u64::from(u32_at(&tail, end + 16));
    if end >= 20 && tail[end - 20..end - 16] == 0x0706_4b50u32.to_le_bytes() {
        let record = read_at(u64_at(&tail, end - 12), 56)?;
        if record[..4] != 0x0606_4b50u32.to_le_bytes() {
            return Err(bad("a broken ZIP64 end record"));
        }
        count = u64_at(&record, 32);
        size = u64_at(&record, 40);
        offset = u64_at(&record, 48);
    }
    let directory = read_at(offset, usize::try_from(size).map_err(|_| bad("too large"))?)?;
    let mut entries = Vec::new();
    let mut i = 0;
    for _ in 0..count {
        if directory.len() < i + 46 || directory[i..i + 4] != 0x0201_4b50u32.to_le_bytes() {
            return Err(bad("a broken central directory"));
        }
        let deflated = u16_at(&directory, i + 10) == 8;
        let crc32 = u32_at(&directory, i + 16);
        let mut stored_bytes = u64::from(u32_at(&directory, i + 20));
        let mut bytes = u64::from(u32_at(&directory, i + 24));
        let name_len = usize::from(u16_at(&directory, i + 28));
        let extra_len = usize::from(u16_at(&directory, i + 30));
        let comment_len = usize::from(u16_at(&directory, i + 32));
        let mut local = u64::from(u32_at(&directory, i + 42));
        let name_end = i + 46 + name_len;
        let extra_end = name_end + extra_len;
        if directory.len() < extra_end + comment_len {
            return Err(bad("a broken central directory"));
        }
        let name = String::from_utf8(directory[i + 46..name_end].to_vec())
            .map_err(|_| bad("a name that is not UTF-8"))?;
        let mut e = name_end;
        while e + 4 <= extra_end {
            let (id, n) = (
                u16_at(&directory, e),
                usize::from(u16_at(&directory, e + 2)),
            );
            if id == 1 {
                let mut at = e + 4;
                for field in [&mut bytes, &mut stored_bytes, &mut local] {
                    if *field == U32_MAX && at + 8 <= e + 4 + n {
                        *field = u64_at(&directory, at);
                        at += 8;
                    }
                }
            }
            e += 4 + n;
        }
        let header = read_at(local, 30)?;
        let data_offset =
            local + 30 + u64::from(u16_at(&header, 26)) + u64::from(u16_at(&header, 28));
        entries.push(Listed {
            name,
            deflated,
            crc32,
            bytes,
            stored_bytes,
            data_offset,
        });
        i = extra_end + comment_len;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use super::*;

    /// A zip of `files` put together as the bundle is.
    fn zip(files: &[(&str, &[u8], bool)]) -> Vec<u8> {
        let at = (0, 0);
        let mut out = Vec::new();
        let mut entries = Vec::new();
        for (name, content, deflate) in files {
            let stored = if *deflate {
                let mut e =
                    flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(content).unwrap();
                e.finish().unwrap()
            } else {
                content.to_vec()
            };
            let entry = Entry {
                name: (*name).to_owned(),
                deflated: *deflate,
                crc32: crc32fast::hash(content),
                bytes: content.len() as u64,
                stored_bytes: stored.len() as u64,
                offset: out.len() as u64,
            };
            out.extend(local_header(&entry, at));
            out.extend(stored);
            entries.push(entry);
        }
        let offset = out.len() as u64;
        out.extend(central_directory(&entries, offset, at));
        out
    }

    #[test]
    fn a_zip_reads_back() {
        let bytes = zip(&[
            ("messages.jsonl", b"{\"a\":1}\n{\"a\":2}\n", true),
            ("files/x/data.bin", &[0u8, 1, 2, 3], false),
            ("manifest.json", b"{}", true),
        ]);
        let mut read_at = |at: u64, n: usize| Ok(bytes[at as usize..at as usize + n].to_vec());
        let listed = list(bytes.len() as u64, &mut read_at).unwrap();
        let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["messages.jsonl", "files/x/data.bin", "manifest.json"]
        );
        let raw = &listed[1];
        assert_eq!(
            &bytes[raw.data_offset as usize..raw.data_offset as usize + 4],
            &[0, 1, 2, 3]
        );
        assert_eq!(listed[0].bytes, 16);
        assert!(listed[0].deflated);
    }

    #[test]
    fn past_four_gigabytes_the_zip64_fields_are_written() {
        let entry = Entry {
            name: "big".into(),
            deflated: false,
            crc32: 7,
            bytes: 5 << 30,
            stored_bytes: 5 << 30,
            offset: 6 << 30,
        };
        let header = local_header(&entry, (0, 0));
        assert_eq!(&header[18..26], &[0xFF; 8]);
        let directory = central_directory(&[entry], 11 << 30, (0, 0));
        // The ZIP64 end record and its locator come before the classic end record.
        let classic = directory.len() - 22;
        assert_eq!(
            &directory[classic - 20..classic - 16],
            &0x0706_4b50u32.to_le_bytes()
        );
    }
}
