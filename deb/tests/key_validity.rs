#![allow(clippy::unwrap_used)]
//! Which keys may sign a release, with throwaway keys made by gpg in each test (its own
//! GNUPGHOME, times faked with `--faked-system-time` relative to now): expired, revoked and
//! non-signing keys and subkeys, expired and future signatures and a stale `Valid-Until`
//! are refused naming the key and why; valid keys and subkeys are accepted.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_deb::repository::{load_suite, Fetch, RepositoryError, Suite};
use kiln_deb::signature::{Invalidity, SignatureError};
use kiln_deb::Keyring;

const DAY: i64 = 86_400;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A GNUPGHOME of the test's own; its agent is stopped when dropped.
struct Gpg {
    home: tempfile::TempDir,
}

impl Gpg {
    /// `None` when gpg is missing (a skip locally, a failure in CI).
    fn new() -> Option<Gpg> {
        let found = Command::new("gpg").arg("--version").stdout(Stdio::null()).status().is_ok();
        if !found {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "gpg missing: run ci/install-deps"
            );
            eprintln!("SKIP: gpg not found on PATH; run ci/install-deps to install it");
            return None;
        }
        // Short: the agent's socket path must fit in a sockaddr_un.
        let home = tempfile::Builder::new()
            .prefix("kg")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in("/tmp")
            .unwrap();
        Some(Gpg { home })
    }

    /// Runs gpg at `days` from now (None: the real time) with `stdin`, returning stdout.
    fn run(&self, days: Option<i64>, args: &[&str], stdin: &str) -> Vec<u8> {
        let mut cmd = Command::new("gpg");
        cmd.env("GNUPGHOME", self.home.path()).args([
            "--batch",
            "--quiet",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]);
        if let Some(days) = days {
            cmd.arg("--faked-system-time").arg((now() + days * DAY).to_string());
        }
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "gpg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    /// Fingerprints of `uid`'s key: the primary first, then each subkey in order.
    fn fingerprints(&self, uid: &str) -> Vec<String> {
        let listing = self.run(None, &["--with-colons", "--list-keys", uid], "");
        String::from_utf8(listing)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("fpr:"))
            .map(|l| l.split(':').nth(9).unwrap().to_string())
            .collect()
    }

    /// A new key `name@kiln.invalid` made `days` from now; returns its fingerprint.
    fn key(&self, name: &str, algo: &str, usage: &str, expire: &str, days: i64) -> String {
        let uid = format!("{name} <{name}@kiln.invalid>");
        self.run(Some(days), &["--quick-gen-key", &uid, algo, usage, expire], "");
        self.fingerprints(&format!("{name}@kiln.invalid"))[0].clone()
    }

    /// A new subkey of `fpr` made `days` from now; returns its fingerprint.
    fn subkey(&self, fpr: &str, algo: &str, usage: &str, expire: &str, days: i64) -> String {
        self.run(Some(days), &["--quick-add-key", fpr, algo, usage, expire], "");
        self.fingerprints(fpr).last().unwrap().clone()
    }

    /// `text` clearsigned by exactly `signer` (a key or subkey) `days` from now.
    fn sign(&self, signer: &str, text: &str, days: i64, extra: &[&str]) -> String {
        let input = self.home.path().join("text");
        let output = self.home.path().join("text.asc");
        std::fs::write(&input, text).unwrap();
        let (input, output) = (input.to_str().unwrap(), output.to_str().unwrap());
        let signer = format!("{signer}!");
        let mut args = vec!["--yes", "--local-user", &signer, "--clearsign", "-o", output];
        args.extend(extra);
        args.push(input);
        self.run(Some(days), &args, "");
        std::fs::read_to_string(output).unwrap()
    }

    /// A binary detached signature over `data` by exactly `signer`, made now.
    fn detach(&self, signer: &str, data: &str) -> Vec<u8> {
        let output = self.home.path().join("data.sig");
        let signer = format!("{signer}!");
        let out = output.to_str().unwrap();
        self.run(None, &["--yes", "--local-user", &signer, "--detach-sign", "-o", out], data);
        std::fs::read(output).unwrap()
    }

    fn export(&self, fpr: &str) -> Keyring {
        Keyring::parse(&self.run(None, &["--armor", "--export", fpr], "")).unwrap()
    }

    /// Runs `--edit-key fpr` answering its prompts with `script`.
    fn edit(&self, fpr: &str, script: &str) {
        self.run(None, &["--command-fd", "0", "--edit-key", fpr], script);
    }

    /// Imports the revocation certificate gpg made with the key, revoking it.
    fn revoke(&self, fpr: &str) {
        let path = self.home.path().join(format!("openpgp-revocs.d/{fpr}.rev"));
        let text = std::fs::read_to_string(path).unwrap();
        // gpg guards the certificate against an accidental import with a leading ':'.
        let text = text.replace(
            ":-----BEGIN PGP PUBLIC KEY BLOCK-----",
            "-----BEGIN PGP PUBLIC KEY BLOCK-----",
        );
        let file = self.home.path().join("revocation.asc");
        std::fs::write(&file, text).unwrap();
        self.run(None, &["--import", file.to_str().unwrap()], "");
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let stopped = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
        if !stopped.is_ok_and(|s| s.success()) {
            eprintln!("warning: the gpg-agent of {} may still run", self.home.path().display());
        }
    }
}

const TEXT: &str = "Suite: test\nSHA256:\n";

fn verify(keyring: &Keyring, signed: &str) -> Result<String, SignatureError> {
    keyring.verify_clearsigned(signed, SystemTime::now())
}

/// The reason a signature by a trusted key was refused, checking the message names `fpr`.
fn refused(result: Result<String, SignatureError>, fpr: &str) -> Invalidity {
    match result {
        Err(e @ SignatureError::Invalid { .. }) => {
            assert!(e.to_string().contains(fpr), "{e}");
            let SignatureError::Invalid { reason, .. } = e else { unreachable!() };
            *reason
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn valid_keys_and_subkeys_sign() {
    let Some(gpg) = Gpg::new() else { return };
    // A key that expires next year, a signing subkey that expires in a month, and a
    // signature that expires tomorrow: all valid now.
    let fpr = gpg.key("a", "ed25519", "cert", "1y", -2);
    let sub = gpg.subkey(&fpr, "ed25519", "sign", "30d", -1);
    let keyring = gpg.export(&fpr);
    keyring.check_usable(SystemTime::now()).unwrap();
    let signed = gpg.sign(&sub, TEXT, 0, &["--default-sig-expire", "1d"]);
    assert_eq!(verify(&keyring, &signed).unwrap(), TEXT.trim_end());
    // The primary key may sign too when it is marked for signing.
    let plain = gpg.key("b", "ed25519", "sign", "never", -1);
    let signed = gpg.sign(&plain, TEXT, 0, &[]);
    assert_eq!(verify(&gpg.export(&plain), &signed).unwrap(), TEXT.trim_end());
}

#[test]
fn an_expired_key_or_subkey_is_refused() {
    let Some(gpg) = Gpg::new() else { return };
    let fpr = gpg.key("a", "ed25519", "sign", "1d", -10);
    let signed = gpg.sign(&fpr, TEXT, -10, &[]);
    let keyring = gpg.export(&fpr);
    let reason = refused(verify(&keyring, &signed), &fpr);
    assert!(matches!(reason, Invalidity::KeyExpired { .. }), "{reason}");
    // As a detached signature (`Release.gpg`) too.
    let dir = gpg.home.path();
    std::fs::write(dir.join("release"), TEXT).unwrap();
    let signer = format!("{fpr}!");
    let sig = dir.join("release.gpg");
    gpg.run(
        Some(-10),
        &[
            "--local-user",
            &signer,
            "--detach-sign",
            "-o",
            sig.to_str().unwrap(),
            dir.join("release").to_str().unwrap(),
        ],
        "",
    );
    let detached =
        keyring.verify_detached(TEXT.as_bytes(), &std::fs::read(&sig).unwrap(), SystemTime::now());
    assert!(
        matches!(&detached, Err(SignatureError::Invalid { reason, .. }) if matches!(**reason, Invalidity::KeyExpired { .. })),
        "{detached:?}"
    );
    let err = keyring.check_usable(SystemTime::now()).unwrap_err();
    assert!(err.to_string().contains(&format!("key {fpr}: key {fpr} expired at")), "{err}");

    // Made to expire a week ago with --quick-set-expire, then extended: refused, then
    // accepted.
    let other = gpg.key("c", "ed25519", "sign", "never", -10);
    let signed = gpg.sign(&other, TEXT, -9, &[]);
    gpg.run(Some(-8), &["--quick-set-expire", &other, "1d"], "");
    let reason = refused(verify(&gpg.export(&other), &signed), &other);
    assert!(matches!(reason, Invalidity::KeyExpired { .. }), "{reason}");
    gpg.run(None, &["--quick-set-expire", &other, "1y"], "");
    assert_eq!(verify(&gpg.export(&other), &signed).unwrap(), TEXT.trim_end());

    let primary = gpg.key("b", "ed25519", "cert", "never", -10);
    let sub = gpg.subkey(&primary, "ed25519", "sign", "1d", -10);
    let signed = gpg.sign(&sub, TEXT, -10, &[]);
    let reason = refused(verify(&gpg.export(&primary), &signed), &sub);
    assert_eq!(
        reason,
        Invalidity::SubkeyExpired { fingerprint: sub.clone(), at: reason_at(&reason) }
    );
}

fn reason_at(reason: &Invalidity) -> String {
    match reason {
        Invalidity::SubkeyExpired { at, .. } | Invalidity::KeyExpired { at, .. } => at.clone(),
        other => panic!("{other}"),
    }
}

#[test]
fn a_revoked_key_or_subkey_is_refused() {
    let Some(gpg) = Gpg::new() else { return };
    let fpr = gpg.key("a", "ed25519", "sign", "never", -1);
    let signed = gpg.sign(&fpr, TEXT, 0, &[]);
    gpg.revoke(&fpr);
    let reason = refused(verify(&gpg.export(&fpr), &signed), &fpr);
    assert!(matches!(reason, Invalidity::KeyRevoked { .. }), "{reason}");

    let primary = gpg.key("b", "ed25519", "cert", "never", -1);
    let first = gpg.subkey(&primary, "ed25519", "sign", "never", -1);
    let second = gpg.subkey(&primary, "ed25519", "sign", "never", -1);
    let by_first = gpg.sign(&first, TEXT, 0, &[]);
    let by_second = gpg.sign(&second, TEXT, 0, &[]);
    // Revoke the second subkey (reason 0, no text): the first still signs.
    gpg.edit(&primary, "key 2\nrevkey\ny\n0\n\ny\nsave\n");
    let keyring = gpg.export(&primary);
    assert_eq!(verify(&keyring, &by_first).unwrap(), TEXT.trim_end());
    let reason = refused(verify(&keyring, &by_second), &second);
    assert!(
        matches!(&reason, Invalidity::SubkeyRevoked { fingerprint, .. } if *fingerprint == second),
        "{reason}"
    );
}

#[test]
fn a_subkey_not_marked_for_signing_is_refused() {
    let Some(gpg) = Gpg::new() else { return };
    let primary = gpg.key("a", "ed25519", "cert", "never", -1);
    let sub = gpg.subkey(&primary, "ed25519", "sign", "never", -1);
    let signed = gpg.sign(&sub, TEXT, 0, &[]);
    // Its usage changed from signing to authentication after it signed.
    gpg.edit(&primary, "key 1\nchange-usage\nS\nA\nQ\nsave\n");
    let reason = refused(verify(&gpg.export(&primary), &signed), &sub);
    assert_eq!(reason, Invalidity::NotSigning { what: "subkey", fingerprint: sub });
}

#[test]
fn a_key_file_with_no_key_that_may_sign_is_refused() {
    let Some(gpg) = Gpg::new() else { return };
    // Certification and encryption only.
    let fpr = gpg.key("a", "ed25519", "cert", "never", -1);
    gpg.subkey(&fpr, "cv25519", "encr", "never", -1);
    let err = gpg.export(&fpr).check_usable(SystemTime::now()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("the key file has no key that may sign now: key {fpr}: key {fpr} is not marked for signing")
    );
    // One usable key among dead ones is enough.
    let good = gpg.key("b", "ed25519", "sign", "never", -1);
    let both = gpg.run(None, &["--armor", "--export", &fpr, &good], "");
    Keyring::parse(&both).unwrap().check_usable(SystemTime::now()).unwrap();
}

#[test]
fn an_expired_or_future_signature_is_refused() {
    let Some(gpg) = Gpg::new() else { return };
    let fpr = gpg.key("a", "ed25519", "sign", "never", -10);
    let keyring = gpg.export(&fpr);
    let stale = gpg.sign(&fpr, TEXT, -5, &["--default-sig-expire", "1d"]);
    let reason = refused(verify(&keyring, &stale), &fpr);
    assert!(matches!(reason, Invalidity::SignatureExpired { .. }), "{reason}");
    let future = gpg.sign(&fpr, TEXT, 2, &[]);
    let reason = refused(verify(&keyring, &future), &fpr);
    assert!(matches!(reason, Invalidity::SignatureFuture { .. }), "{reason}");
}

#[test]
fn certifications_by_other_keys_neither_break_nor_bless_a_key() {
    let Some(gpg) = Gpg::new() else { return };
    let signer = gpg.key("a", "ed25519", "sign", "never", -3);
    let other = gpg.key("b", "ed25519", "cert", "never", -3);
    let signed = gpg.sign(&signer, TEXT, -2, &[]);
    // Published keys carry certifications by keys the file does not hold (Debian's
    // archive keys do): they are not the key's to prove, and the key still signs.
    gpg.run(None, &["--local-user", &format!("{other}!"), "--quick-sign-key", &signer], "");
    let exported = gpg.run(None, &["--armor", "--export", &signer], "");
    let keyring = Keyring::parse(&exported).unwrap();
    assert_eq!(verify(&keyring, &signed).unwrap(), TEXT.trim_end());

    // Nor does a certification, newer than the key's own signature and without key flags,
    // make a key that stopped signing sign again.
    let retired = gpg.key("c", "ed25519", "sign", "never", -3);
    let signed = gpg.sign(&retired, TEXT, -2, &[]);
    gpg.run(Some(-1), &["--command-fd", "0", "--edit-key", &retired], "change-usage\nS\nQ\nsave\n");
    gpg.run(None, &["--local-user", &format!("{other}!"), "--quick-sign-key", &retired], "");
    let reason = refused(verify(&gpg.export(&retired), &signed), &retired);
    assert_eq!(reason, Invalidity::NotSigning { what: "key", fingerprint: retired });
}

/// A repository in memory holding one InRelease.
struct Files(BTreeMap<String, Vec<u8>>);

impl Fetch for Files {
    fn get(&mut self, path: &str, _limit: u64) -> io::Result<Option<Vec<u8>>> {
        Ok(self.0.get(path).cloned())
    }
}

fn release_date(days: i64) -> String {
    let out = Command::new("date")
        .env("LC_ALL", "C")
        .args(["-u", "-R", "-d"])
        .arg(format!("@{}", now() + days * DAY))
        .output()
        .unwrap();
    // `date -R` ends in `+0000`; apt writes `UTC`.
    String::from_utf8(out.stdout).unwrap().trim().replace("+0000", "UTC")
}

/// Loads suite `test` from an InRelease signed by `fpr` three days ago whose `field` is
/// `days` from now.
fn load_dated(
    gpg: &Gpg,
    fpr: &str,
    keyring: &Keyring,
    field: &str,
    days: i64,
) -> Result<Suite, RepositoryError> {
    let text = format!("Suite: test\n{field}: {}\nSHA256:\n", release_date(days));
    let signed = gpg.sign(fpr, &text, -3, &[]);
    let mut files =
        Files(BTreeMap::from([("dists/test/InRelease".to_string(), signed.into_bytes())]));
    load_suite(&mut files, keyring, "test", &["main".into()], &["amd64".into()], SystemTime::now())
}

#[test]
fn a_release_past_its_valid_until_is_refused() {
    let Some(gpg) = Gpg::new() else { return };
    let fpr = gpg.key("a", "ed25519", "sign", "never", -10);
    let keyring = gpg.export(&fpr);
    let load = |days: i64| load_dated(&gpg, &fpr, &keyring, "Valid-Until", days);
    let err = load(-1).unwrap_err();
    assert!(matches!(err, RepositoryError::Expired { .. }), "{err}");
    assert!(err.to_string().starts_with("dists/test/InRelease was valid until "), "{err}");
    // Valid for another day: accepted, up to the index the release does not list.
    let err = load(1).unwrap_err();
    assert!(matches!(err, RepositoryError::NoIndex { .. }), "{err}");
}

#[test]
fn a_release_dated_ahead_of_the_clock_is_refused() {
    let Some(gpg) = Gpg::new() else { return };
    let fpr = gpg.key("a", "ed25519", "sign", "never", -10);
    let keyring = gpg.export(&fpr);
    let load = |days: i64| load_dated(&gpg, &fpr, &keyring, "Date", days);
    let err = load(1).unwrap_err();
    assert!(matches!(err, RepositoryError::NotYetValid { .. }), "{err}");
    assert!(err.to_string().starts_with("dists/test/InRelease is dated "), "{err}");
    // Made yesterday: accepted, up to the index the release does not list.
    let err = load(-1).unwrap_err();
    assert!(matches!(err, RepositoryError::NoIndex { .. }), "{err}");
}

#[test]
fn a_bad_signature_by_a_trusted_key_refuses_the_text_even_beside_a_good_one() {
    let Some(gpg) = Gpg::new() else { return };
    let a = gpg.key("a", "ed25519", "sign", "never", -1);
    let b = gpg.key("b", "ed25519", "sign", "never", -1);
    let stranger = gpg.key("c", "ed25519", "sign", "never", -1);
    let keyring = Keyring::parse(&gpg.run(None, &["--export", &a, &b], "")).unwrap();
    let good = gpg.detach(&a, TEXT);
    let now = SystemTime::now();
    keyring.verify_detached(TEXT.as_bytes(), &good, now).unwrap();
    // A signature by an unknown key over other text says nothing: the good one stands.
    let unknown = [good.clone(), gpg.detach(&stranger, "other text")].concat();
    keyring.verify_detached(TEXT.as_bytes(), &unknown, now).unwrap();
    // By a trusted key, it does not verify: refused, naming that key, in either order.
    let bad = gpg.detach(&b, "other text");
    for signatures in [[good.clone(), bad.clone()].concat(), [bad, good].concat()] {
        let refused = keyring.verify_detached(TEXT.as_bytes(), &signatures, now);
        assert!(matches!(&refused, Err(SignatureError::Bad { key }) if *key == b), "{refused:?}");
    }
}

#[test]
fn a_release_with_more_signatures_than_any_archive_keeps_is_refused_unchecked() {
    let Some(gpg) = Gpg::new() else { return };
    let fpr = gpg.key("a", "ed25519", "sign", "never", -1);
    let keyring = gpg.export(&fpr);
    let one = gpg.detach(&fpr, TEXT);
    // Each signature naming a trusted key costs a pass over the release: a hostile server
    // (or anyone on a plain-http path) could repeat one until the lock spends hours hashing.
    let many = |n: usize| one.repeat(n);
    keyring.verify_detached(TEXT.as_bytes(), &many(2), SystemTime::now()).unwrap();
    let refused = keyring.verify_detached(TEXT.as_bytes(), &many(17), SystemTime::now());
    assert!(
        matches!(refused, Err(SignatureError::TooManySignatures { found: 17, max: 16 })),
        "{refused:?}"
    );
}
