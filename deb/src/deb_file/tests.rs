use std::io::Write;

use super::*;
use crate::ar::tests::archive;

/// One tar member for a test package: name as written, type, data or link target, mode.
struct T<'a>(&'a str, tar::EntryType, &'a [u8], u32);

fn tar_of(members: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for T(name, kind, data, mode) in members {
        let mut h = tar::Header::new_gnu();
        // Written into the raw field: the tar crate's setters refuse the hostile names.
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let is_link = matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link);
        if is_link {
            h.as_old_mut().linkname[..data.len()].copy_from_slice(data);
            h.set_size(0);
        } else {
            h.set_size(data.len() as u64);
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        if !is_link {
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

const CONTROL: &str = "Package: hello\nVersion: 1.0-1\nArchitecture: amd64\nDescription: test\n";

fn control_tar() -> Vec<u8> {
    use tar::EntryType::*;
    tar_of(&[
        T("./", Directory, b"", 0o755),
        T("./control", Regular, CONTROL.as_bytes(), 0o644),
        T("./md5sums", Regular, b"5a105e8b9d40e1329780d62ea2265d8a  usr/bin/hello\n", 0o644),
        T("./postinst", Regular, b"#!/bin/sh\n", 0o755),
        T("./preinst", Regular, b"#!/bin/sh\n", 0o755),
    ])
}

fn deb(data_name: &str, data: &[u8]) -> Vec<u8> {
    archive(&[
        ("debian-binary", b"2.0\n"),
        ("control.tar.gz", &gz(&control_tar())),
        (data_name, data),
    ])
}

type Seen = Vec<(Member, Vec<u8>)>;

fn read(bytes: &[u8]) -> Result<(Control, Seen), DebError> {
    let mut seen = Vec::new();
    let control = read_deb(bytes, Limits::default(), |m, r| {
        let mut data = Vec::new();
        r.read_to_end(&mut data)?;
        seen.push((m.clone(), data));
        Ok(())
    })?;
    Ok((control, seen))
}

#[test]
fn a_package_gives_its_control_and_members_as_packaged() {
    use tar::EntryType::*;
    let data = tar_of(&[
        T("./", Directory, b"", 0o755),
        T("./usr/", Directory, b"", 0o755),
        T("./usr/bin/", Directory, b"", 0o755),
        T("./usr/bin/hello", Regular, b"test1", 0o4755),
        T("./usr/bin/hi", Link, b"./usr/bin/hello", 0o4755),
        T("./usr/bin/hey", Symlink, b"hello", 0o777),
    ]);
    for (name, bytes) in
        [("data.tar.xz", xz(&data)), ("data.tar.gz", gz(&data)), ("data.tar", data.clone())]
    {
        let (control, seen) = read(&deb(name, &bytes)).unwrap();
        assert_eq!(control.fields.get("Package"), Some("hello"));
        assert_eq!(control.text, CONTROL);
        assert_eq!(control.scripts, ["preinst", "postinst"]);
        assert!(control.md5sums.as_deref().unwrap().contains("usr/bin/hello"));
        let listing: Vec<String> = seen
            .iter()
            .map(|(m, d)| {
                format!("{} {:?} {:o} {}", m.path, m.kind, m.mode, String::from_utf8_lossy(d))
            })
            .collect();
        assert_eq!(
            listing,
            [
                "/usr Dir 755 ",
                "/usr/bin Dir 755 ",
                "/usr/bin/hello File { size: 5 } 4755 test1",
                "/usr/bin/hi HardLink { target: MemberPath(\"usr/bin/hello\") } 4755 ",
                "/usr/bin/hey Symlink { target: \"hello\" } 777 ",
            ],
            "{name}"
        );
    }
}

fn refused(members: &[T]) -> String {
    read(&deb("data.tar", &tar_of(members))).unwrap_err().to_string()
}

#[test]
fn members_escaping_the_root_are_refused() {
    use tar::EntryType::*;
    assert_eq!(
        refused(&[T("./../etc/passwd", Regular, b"x", 0o644)]),
        "member \"./../etc/passwd\" of data.tar has an unsafe name"
    );
    assert!(refused(&[T("/etc/passwd", Regular, b"x", 0o644)]).contains("unsafe name"));
    assert!(refused(&[T("./a", Regular, b"x", 0o644), T("./b", Link, b"../a", 0o644)])
        .contains("unsafe name"));
}

#[test]
fn a_member_written_through_a_symlink_is_refused() {
    use tar::EntryType::*;
    let err =
        refused(&[T("./etc", Symlink, b"/tmp", 0o777), T("./etc/passwd", Regular, b"x", 0o644)]);
    assert_eq!(err, "member \"./etc/passwd\" of data.tar would be written through /etc, which is not a directory");
    let err = refused(&[T("./d", Symlink, b".", 0o777), T("./d/e/f", Directory, b"", 0o755)]);
    assert!(err.contains("written through /d"), "{err}");
}

#[test]
fn duplicates_devices_and_dangling_hard_links_are_refused() {
    use tar::EntryType::*;
    assert!(refused(&[T("./a", Regular, b"1", 0o644), T("./a", Regular, b"2", 0o644)])
        .contains("appears twice"));
    assert!(refused(&[T("./a", Symlink, b"x", 0o777), T("./a", Directory, b"", 0o755)])
        .contains("appears twice"));
    assert!(refused(&[T("./dev/null", Char, b"", 0o666)]).contains("packages may hold only"));
    assert!(refused(&[T("./b", Link, b"./a", 0o644)]).contains("not an earlier regular file"));
    // Directories may repeat, as tar writes them.
    read(&deb(
        "data.tar",
        &tar_of(&[T("./d/", Directory, b"", 0o755), T("./d", Directory, b"", 0o700)]),
    ))
    .unwrap();
}

#[test]
fn a_member_larger_than_its_header_says_is_refused() {
    use tar::EntryType::*;
    let mut data =
        tar_of(&[T("./a", Regular, &[b'x'; 700], 0o644), T("./b", Regular, b"y", 0o644)]);
    // The header of ./a now says 10 bytes: the rest of its data is read as the next header.
    let mut h = tar::Header::from_byte_slice(&data[..512]).clone();
    h.set_size(10);
    h.set_cksum();
    data[..512].copy_from_slice(h.as_bytes());
    let err = read(&deb("data.tar", &data)).unwrap_err();
    assert!(matches!(err, DebError::Read { .. }), "{err}");
    // And one cut short inside its data.
    let whole = tar_of(&[T("./a", Regular, &[b'x'; 700], 0o644)]);
    let err = read(&deb("data.tar", &whole[..800])).unwrap_err();
    assert!(matches!(err, DebError::Read { .. } | DebError::Member { .. }), "{err}");
}

#[test]
fn a_truncated_ar_is_refused_at_every_cut() {
    let data = tar_of(&[T("./a", tar::EntryType::Regular, b"hello", 0o644)]);
    let bytes = deb("data.tar.xz", &xz(&data));
    for cut in (0..bytes.len()).step_by(7) {
        assert!(read(&bytes[..cut]).is_err(), "cut at {cut} of {} was accepted", bytes.len());
    }
}

#[test]
fn an_xz_bomb_in_data_is_refused() {
    // 64 MiB of zeros as one member, in a few KiB of xz.
    let mut data = tar_of(&[]);
    let mut h = tar::Header::new_gnu();
    h.set_path("./zeros").unwrap();
    h.set_size(64 << 20);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_mode(0o644);
    h.set_cksum();
    data.splice(0..0, h.as_bytes().iter().copied().chain(std::iter::repeat_n(0, 64 << 20)));
    let bomb = xz(&data);
    let err = read(&deb("data.tar.xz", &bomb)).unwrap_err();
    let DebError::Read { source, .. } = &err else { panic!("{err}") };
    assert!(source.to_string().contains("times its compressed size"), "{source}");
}

#[test]
fn not_a_binary_package_is_refused() {
    assert!(matches!(read(b"!<arch>\n"), Err(DebError::Format(_))));
    let wrong = archive(&[("debian-binary", b"3.0\n")]);
    assert!(read(&wrong).unwrap_err().to_string().contains("not format 2.x"));
    let no_data = archive(&[("debian-binary", b"2.0\n"), ("control.tar.gz", &gz(&control_tar()))]);
    assert!(read(&no_data).unwrap_err().to_string().contains("no data.tar"));
    let odd = archive(&[("debian-binary", b"2.0\n"), ("control.tar.lz", b"")]);
    assert!(read(&odd).unwrap_err().to_string().contains("is not control.tar.*"));
}
