// SPDX-License-Identifier: GPL-3.0-or-later
//! Maildir folders (the layout Dovecot, Postfix's `local`, Courier and others write): listing
//! the messages of a folder, reading the `:2,FLAGS` info of a file name, and moving a message
//! to another folder with its flags kept.
//!
//! A Maildir folder is a directory with `tmp/`, `new/` and `cur/`. Delivery writes to `tmp/`
//! and renames into `new/`; a mail client that has seen a message moves it to `cur/` and adds
//! `:2,` plus flag letters (`S` seen, `R` replied, `F` flagged, `T` trashed, `D` draft,
//! `P` passed) to its name. With Maildir++ (Dovecot's default) sub-folders are directories
//! `.Name` inside the root, which is itself the INBOX.
//!
//! A move is one `rename(2)` within one file system: after a crash the message is at its old
//! name or its new one, never in both places and never in neither. The base name (and so the
//! flags) is kept, and the message stays in `new/` or `cur/` as it was; a name already taken
//! in the target gets a fresh unique base (Maildir names are unique by construction, so this
//! only guards against a hand-made copy). Both directories are synced afterwards so the move
//! survives a power loss. Files in `tmp/` are deliveries under way and are never touched.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Context, Result, bail};

/// The sub-directory a message sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sub {
    /// Delivered, not yet seen by a client.
    New,
    /// Seen by a client (the name may carry flags).
    Cur,
}

impl Sub {
    /// The directory name.
    pub fn as_str(self) -> &'static str {
        match self {
            Sub::New => "new",
            Sub::Cur => "cur",
        }
    }
}

/// One message file in a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Full path.
    pub path: PathBuf,
    /// `new` or `cur`.
    pub sub: Sub,
    /// The unique part of the name (before `:2,`).
    pub base: String,
    /// The flag letters of the `:2,` info (empty when none).
    pub flags: String,
}

impl Entry {
    /// The file name (base plus info).
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Whether the user has seen the message (`S`).
    pub fn seen(&self) -> bool {
        self.flags.contains('S')
    }
}

/// Splits a Maildir file name into its unique base and its flags. Names without `:2,` (new
/// mail, or another info version) have no flags. Dovecot can be set to use `;` instead of
/// `:` (file systems that refuse colons); both are read.
pub fn parse_name(name: &str) -> (String, String) {
    for sep in [":2,", ";2,"] {
        if let Some((base, flags)) = name.rsplit_once(sep) {
            let flags = flags.chars().filter(|c| c.is_ascii_alphabetic()).collect();
            return (base.to_owned(), flags);
        }
    }
    (name.to_owned(), String::new())
}

/// Whether `dir` is a Maildir folder (has `cur/` and `new/`).
pub fn is_folder(dir: &Path) -> bool {
    dir.join("cur").is_dir() && dir.join("new").is_dir()
}

/// Checks that `dir` is a Maildir folder, with an error saying what to pass instead.
pub fn require_folder(dir: &Path) -> Result<()> {
    if !dir.exists() {
        bail!(
            "{} does not exist; pass an existing Maildir folder, e.g. ~/Maildir/.Junk",
            dir.display()
        );
    }
    if !is_folder(dir) {
        bail!(
            "{} is not a Maildir folder (it needs cur/ and new/ sub-directories); pass the folder itself, e.g. ~/Maildir/.Junk",
            dir.display()
        );
    }
    Ok(())
}

/// Creates a Maildir folder (`tmp`, `new`, `cur`) if it is missing.
pub fn create_folder(dir: &Path) -> Result<()> {
    for s in ["tmp", "new", "cur"] {
        let d = dir.join(s);
        fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    Ok(())
}

/// The messages of a folder (`new/` then `cur/`, each sorted by name so runs are repeatable).
/// Hidden files and sub-directories are skipped; `tmp/` is never read.
pub fn list(dir: &Path) -> Result<Vec<Entry>> {
    require_folder(dir)?;
    let mut out = Vec::new();
    for sub in [Sub::New, Sub::Cur] {
        let d = dir.join(sub.as_str());
        let mut names = Vec::new();
        for e in fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let e = e.with_context(|| format!("cannot list {}", d.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            names.push(name);
        }
        names.sort();
        for name in names {
            let (base, flags) = parse_name(&name);
            out.push(Entry {
                path: d.join(&name),
                sub,
                base,
                flags,
            });
        }
    }
    Ok(out)
}

/// The inbox of a Maildir++ sub-folder: the root above `.Junk` (its parent, when that is a
/// Maildir folder itself).
pub fn inbox_of(folder: &Path) -> Result<PathBuf> {
    let abs = folder
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", folder.display()))?;
    let is_sub = abs
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'));
    match abs.parent() {
        Some(root) if is_sub && is_folder(root) => Ok(root.to_path_buf()),
        _ => bail!(
            "cannot tell the inbox of {}: it is not a Maildir++ sub-folder (.Name inside a Maildir); pass --inbox DIR",
            folder.display()
        ),
    }
}

/// A fresh unique Maildir base name (`time.M<micros>P<pid>Q<n>.host`).
fn unique_base(n: u32) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().replace(['/', ':'], "_"))
        .unwrap_or_else(|_| "localhost".into());
    format!(
        "{}.M{}P{}Q{n}R.{host}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id()
    )
}

fn sync_dir(d: &Path) -> Result<()> {
    fs::File::open(d)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", d.display()))
}

/// Moves `entry` into the folder `to` (same sub-directory, same name and flags) with one
/// rename and syncs both directories; returns the new path. Fails, leaving the message where
/// it was, when the target is on another file system or not a Maildir folder.
pub fn move_to(entry: &Entry, to: &Path) -> Result<PathBuf> {
    let target = move_unsynced(entry, to, &mut bases(to)?)?;
    if let Some(dir) = target.parent() {
        sync_dir(dir)?;
    }
    if let Some(src) = entry.path.parent() {
        sync_dir(src)?;
    }
    Ok(target)
}

/// [`move_to`] without the directory syncs, for many moves in a row followed by one
/// [`sync_folder`] of each folder. The rename is atomic all the same: a power loss before the
/// sync can only undo the move (the message is back where it was), never lose or double it.
///
/// Never replaces a file: the rename is `renameat2(RENAME_NOREPLACE)` (no window between a
/// check and the rename). A target that already holds the same *base* name (in `new/` or
/// `cur/`, whatever its flags: for Maildir readers the base is the message's identity) or
/// the same file name gets a fresh unique base with the same flags. `taken`: the base names in
/// `to` ([`bases`], read once for many moves), kept up to date here.
pub fn move_unsynced(
    entry: &Entry,
    to: &Path,
    taken: &mut std::collections::BTreeSet<String>,
) -> Result<PathBuf> {
    require_folder(to)?;
    let dir = to.join(entry.sub.as_str());
    let mut n = 0u32;
    let mut name = entry.file_name();
    if taken.contains(&entry.base) {
        n += 1;
        name = fresh_name(entry, n);
    }
    loop {
        let target = dir.join(&name);
        match rename_noreplace(&entry.path, &target) {
            Ok(()) => {
                taken.insert(parse_name(&name).0);
                return Ok(target);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => {
                n += 1;
                name = fresh_name(entry, n);
            }
            Err(e) => {
                let hint = if e.raw_os_error() == Some(18) {
                    " (EXDEV: the folders are on different file systems; Maildir moves must stay on one)"
                } else {
                    ""
                };
                bail!(
                    "cannot move {} to {}: {e}{hint}",
                    entry.path.display(),
                    target.display()
                );
            }
        }
    }
}

/// A fresh name for `entry`: a unique base, the same flags.
fn fresh_name(entry: &Entry, n: u32) -> String {
    match entry.sub {
        Sub::New => unique_base(n),
        Sub::Cur => format!("{}:2,{}", unique_base(n), entry.flags),
    }
}

/// The base names of the messages in folder `to` (`new/` and `cur/`), for [`move_unsynced`].
pub fn bases(to: &Path) -> Result<std::collections::BTreeSet<String>> {
    Ok(list(to)?.into_iter().map(|e| e.base).collect())
}

/// `rename(2)` that fails with `AlreadyExists` instead of replacing `to`. Where the file
/// system does not support `RENAME_NOREPLACE` (EINVAL; e.g. some network file systems), a
/// hard link (which never replaces either) then an unlink of `from`.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    use rustix::io::Errno;
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if e == Errno::INVAL || e == Errno::NOSYS => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        Err(e) => Err(e.into()),
    }
}

/// Syncs a folder's `new/` and `cur/` (after [`move_unsynced`]).
pub fn sync_folder(dir: &Path) -> Result<()> {
    sync_dir(&dir.join("new"))?;
    sync_dir(&dir.join("cur"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("mailstamp-maildir-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn names_split_into_base_and_flags() {
        assert_eq!(
            parse_name("1700000000.M1P2.host:2,FS"),
            ("1700000000.M1P2.host".into(), "FS".into())
        );
        assert_eq!(parse_name("123.host;2,S"), ("123.host".into(), "S".into()));
        assert_eq!(parse_name("123.host"), ("123.host".into(), String::new()));
        assert_eq!(
            parse_name("123.host:2,"),
            ("123.host".into(), String::new())
        );
        // A size field before the info stays in the base.
        assert_eq!(
            parse_name("1.M2.h,S=120,W=124:2,RS"),
            ("1.M2.h,S=120,W=124".into(), "RS".into())
        );
    }

    #[test]
    fn list_and_move_keep_flags_and_leave_tmp_alone() {
        let root = tmp("move");
        let junk = root.join(".Junk");
        create_folder(&root).unwrap();
        create_folder(&junk).unwrap();
        fs::write(junk.join("new/1.a.host"), "Subject: a\n\nx\n").unwrap();
        fs::write(junk.join("cur/2.b.host:2,RS"), "Subject: b\n\ny\n").unwrap();
        fs::write(junk.join("tmp/3.c.host"), "partial").unwrap();
        fs::write(junk.join("cur/.hidden"), "x").unwrap();
        let l = list(&junk).unwrap();
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!((l[0].sub, l[0].flags.as_str()), (Sub::New, ""));
        assert_eq!((l[1].sub, l[1].flags.as_str()), (Sub::Cur, "RS"));
        assert!(l[1].seen() && !l[0].seen());
        assert_eq!(inbox_of(&junk).unwrap(), root.canonicalize().unwrap());
        assert!(inbox_of(&root).is_err());

        let a = move_to(&l[0], &root).unwrap();
        let b = move_to(&l[1], &root).unwrap();
        assert_eq!(a, root.join("new/1.a.host"));
        assert_eq!(b, root.join("cur/2.b.host:2,RS"));
        assert_eq!(fs::read_to_string(&b).unwrap(), "Subject: b\n\ny\n");
        assert!(list(&junk).unwrap().is_empty());
        assert!(junk.join("tmp/3.c.host").exists());
        assert_eq!(list(&root).unwrap().len(), 2);

        // A name already taken in the target: a fresh name, flags kept, nothing overwritten.
        fs::write(junk.join("cur/2.b.host:2,RS"), "Subject: other\n\nz\n").unwrap();
        let e = list(&junk).unwrap().remove(0);
        let c = move_to(&e, &root).unwrap();
        assert_ne!(c, b);
        assert!(c.to_string_lossy().ends_with(":2,RS"), "{}", c.display());
        assert_eq!(fs::read_to_string(&b).unwrap(), "Subject: b\n\ny\n");
        assert_eq!(list(&root).unwrap().len(), 3);

        // The same base name with other flags (or in new/): a fresh base, nothing replaced,
        // no two messages with one base in the target.
        fs::write(junk.join("cur/2.b.host:2,S"), "Subject: third\n\nw\n").unwrap();
        fs::write(junk.join("cur/1.a.host:2,"), "Subject: fourth\n\nv\n").unwrap();
        for e in list(&junk).unwrap() {
            let t = move_to(&e, &root).unwrap();
            let (base, flags) = parse_name(&t.file_name().unwrap().to_string_lossy());
            assert!(base != "2.b.host" && base != "1.a.host", "{}", t.display());
            assert_eq!(flags, e.flags);
        }
        let bases: Vec<String> = list(&root).unwrap().into_iter().map(|e| e.base).collect();
        let unique: std::collections::BTreeSet<&String> = bases.iter().collect();
        assert_eq!((bases.len(), unique.len()), (5, 5), "{bases:?}");

        // The rename itself never replaces: a taken name is an AlreadyExists error.
        fs::write(root.join("new/x.host"), "keep").unwrap();
        fs::write(junk.join("new/y.host"), "move").unwrap();
        let err = rename_noreplace(&junk.join("new/y.host"), &root.join("new/x.host")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(root.join("new/x.host")).unwrap(), "keep");
        assert!(junk.join("new/y.host").exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_missing_or_plain_directory_is_a_clear_error() {
        let d = tmp("bad");
        let e = list(&d).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        fs::create_dir_all(&d).unwrap();
        let e = list(&d).unwrap_err().to_string();
        assert!(e.contains("not a Maildir folder"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }
}
