//! OpenPGP checks of a repository's `InRelease` (clearsigned) or `Release` + `Release.gpg`
//! (detached), against the keys a recipe trusts. Only the signed text is ever returned, so
//! nothing outside the signature reaches a parser.
//!
//! A signature counts only when it verifies AND, at the time the caller gives (the moment of
//! `kiln lock`), the key or subkey that made it may sign: not expired, not revoked, with the
//! signing capability, and the signature itself neither expired nor made in the future.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use pgp::composed::{
    CleartextSignedMessage, Deserializable, DetachedSignature, SignedPublicKey, SignedPublicSubKey,
};
use pgp::packet::{Signature, SignatureType, SubpacketData};
use pgp::types::{KeyDetails, Timestamp};

use crate::date::utc;

/// How far in the future a signature's creation time may be, for clocks that disagree a
/// little (a repository signed a moment ago by a server whose clock runs ahead).
pub(crate) const CLOCK_SKEW: u64 = 30 * 60;

/// The largest key file read: many times any repository's keyring (Debian's archive keyring
/// is a few dozen KiB), so a file named by mistake is refused without reading it whole.
pub const KEY_FILE_LIMIT: u64 = 8 << 20;

/// The most signatures one release may carry: an archive signs with one key per generation
/// it supports (Debian: two or three), and each signature naming a trusted key costs a pass
/// over the release, so a release carrying thousands could make a lock hash for hours.
const MAX_SIGNATURES: usize = 16;

/// The public keys one repository is trusted under (primary keys and their signing subkeys).
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
}

/// Why a key file or a signature was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("the key file holds no OpenPGP public key")]
    NoKey,
    #[error("the key file is larger than {limit} bytes, more than any keyring")]
    TooLarge { limit: u64 },
    #[error("the key file is not an OpenPGP public key (armored or binary)")]
    Key(#[source] pgp::errors::Error),
    #[error("the key file has no key that may sign now: {reasons}")]
    NoUsableKey { reasons: Reasons },
    #[error("it is not a clearsigned message")]
    Clearsigned(#[source] pgp::errors::Error),
    #[error("it is not an OpenPGP signature")]
    Detached(#[source] pgp::errors::Error),
    #[error("it carries {found} signatures, more than the {max} any archive uses")]
    TooManySignatures { found: usize, max: usize },
    #[error("no signature on it was made by a trusted key ({fingerprints})")]
    Untrusted { fingerprints: String },
    #[error("it is signed by {signer}, which may not sign it: {reason}")]
    Invalid { signer: Box<Signer>, reason: Box<Invalidity> },
    #[error("it carries a bad signature naming trusted key {key}: the text or the signature was altered")]
    Bad { key: String },
}

/// The key that made a signature: a primary key, or a subkey of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub primary: String,
    pub subkey: Option<String>,
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subkey {
            None => write!(f, "key {}", self.primary),
            Some(sub) => write!(f, "subkey {sub} of key {}", self.primary),
        }
    }
}

/// Why a key, subkey or signature is not valid at the time of the check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalidity {
    #[error("key {fingerprint} expired at {at}")]
    KeyExpired { fingerprint: String, at: String },
    #[error("subkey {fingerprint} expired at {at}")]
    SubkeyExpired { fingerprint: String, at: String },
    #[error("key {fingerprint} is revoked ({reason})")]
    KeyRevoked { fingerprint: String, reason: String },
    #[error("subkey {fingerprint} is revoked ({reason})")]
    SubkeyRevoked { fingerprint: String, reason: String },
    #[error("{what} {fingerprint} is not marked for signing")]
    NotSigning { what: &'static str, fingerprint: String },
    #[error("the signature expired at {at}")]
    SignatureExpired { at: String },
    #[error("the signature is dated {created}, in the future")]
    SignatureFuture { created: String },
    #[error("the signature has no creation time")]
    SignatureUndated,
    #[error("the signature is dated {created}, before its key was made ({key_created})")]
    SignatureBeforeKey { created: String, key_created: String },
}

/// Each key of a key file with why it may not sign, for [`SignatureError::NoUsableKey`].
#[derive(Debug)]
pub struct Reasons(Vec<(String, Invalidity)>);

impl fmt::Display for Reasons {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (fingerprint, why)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}key {fingerprint}: {why}")?;
        }
        Ok(())
    }
}

fn fingerprint(key: &impl KeyDetails) -> String {
    format!("{:X}", key.fingerprint())
}

fn secs(t: Timestamp) -> u64 {
    u64::from(t.as_secs())
}

/// Seconds since the Unix epoch; a time before it is the epoch.
fn epoch_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The newest of `signatures` (by creation time) of one of `types`.
fn newest<'a>(
    signatures: impl Iterator<Item = &'a Signature>,
    types: &[SignatureType],
) -> Option<&'a Signature> {
    signatures
        .filter(|s| s.typ().is_some_and(|t| types.contains(&t)))
        .max_by_key(|s| s.created().map_or(0, secs))
}

/// Whether a self-signature allows signing: its key flags do, or it has none (keys older
/// than key flags sign with their primary key).
fn may_sign(sig: &Signature) -> bool {
    let has_flags = sig.config().is_some_and(|c| {
        c.hashed_subpackets().any(|p| matches!(p.data, SubpacketData::KeyFlags(_)))
    });
    !has_flags || sig.key_flags().sign()
}

/// When a key made at `created` expires under `sig`, if it does.
fn expiry(created: Timestamp, sig: &Signature) -> Option<u64> {
    sig.key_expiration_time()
        .filter(|d| d.as_secs() != 0)
        .map(|d| secs(created) + u64::from(d.as_secs()))
}

fn revocation_reason(sig: &Signature) -> String {
    let code = sig.revocation_reason_code().map(|c| format!("{c:?}"));
    let text = sig
        .revocation_reason_string()
        .map(|b| String::from_utf8_lossy(b).trim().to_string())
        .filter(|t| !t.is_empty());
    match (code, text) {
        (Some(c), Some(t)) => format!("{c}: {t}"),
        (Some(c), None) => c,
        (None, Some(t)) => t,
        (None, None) => "no reason given".to_string(),
    }
}

const SELF_SIGNATURES: [SignatureType; 5] = [
    SignatureType::Key,
    SignatureType::CertGeneric,
    SignatureType::CertPersona,
    SignatureType::CertCasual,
    SignatureType::CertPositive,
];

/// Whether the primary key is alive (not revoked, not expired) at `at`; `signing` also
/// asks that it may sign itself.
fn primary_valid(key: &SignedPublicKey, at: u64, signing: bool) -> Result<(), Invalidity> {
    let fpr = fingerprint(&key.primary_key);
    if let Some(rev) = key.details.revocation_signatures.first() {
        return Err(Invalidity::KeyRevoked { fingerprint: fpr, reason: revocation_reason(rev) });
    }
    let self_sigs = key
        .details
        .direct_signatures
        .iter()
        .chain(key.details.users.iter().flat_map(|u| u.signatures.iter()));
    let newest = newest(self_sigs, &SELF_SIGNATURES);
    if let Some(end) = newest.and_then(|s| expiry(key.primary_key.created_at(), s)) {
        if end <= at {
            return Err(Invalidity::KeyExpired { fingerprint: fpr, at: utc(end) });
        }
    }
    if signing && !newest.is_some_and(may_sign) {
        return Err(Invalidity::NotSigning { what: "key", fingerprint: fpr });
    }
    Ok(())
}

/// Whether a subkey may sign at `at` (its primary key alive too).
fn subkey_valid(
    key: &SignedPublicKey,
    sub: &SignedPublicSubKey,
    at: u64,
) -> Result<(), Invalidity> {
    primary_valid(key, at, false)?;
    let fpr = fingerprint(&sub.key);
    let revoked = sub.signatures.iter().find(|s| s.typ() == Some(SignatureType::SubkeyRevocation));
    if let Some(rev) = revoked {
        return Err(Invalidity::SubkeyRevoked { fingerprint: fpr, reason: revocation_reason(rev) });
    }
    let binding = newest(sub.signatures.iter(), &[SignatureType::SubkeyBinding]);
    if let Some(end) = binding.and_then(|s| expiry(sub.key.created_at(), s)) {
        if end <= at {
            return Err(Invalidity::SubkeyExpired { fingerprint: fpr, at: utc(end) });
        }
    }
    // A subkey signs only when its binding says so (and then carries a back-signature,
    // which parsing checked).
    if !binding.is_some_and(|b| b.key_flags().sign()) {
        return Err(Invalidity::NotSigning { what: "subkey", fingerprint: fpr });
    }
    Ok(())
}

/// Whether the signature itself is valid at `at`, made by a key created at `key_created`.
fn signature_valid(sig: &Signature, key_created: Timestamp, at: u64) -> Result<(), Invalidity> {
    let created = sig.created().map(secs).ok_or(Invalidity::SignatureUndated)?;
    if created > at + CLOCK_SKEW {
        return Err(Invalidity::SignatureFuture { created: utc(created) });
    }
    if created < secs(key_created) {
        return Err(Invalidity::SignatureBeforeKey {
            created: utc(created),
            key_created: utc(secs(key_created)),
        });
    }
    if let Some(d) = sig.signature_expiration_time().filter(|d| d.as_secs() != 0) {
        let end = created + u64::from(d.as_secs());
        if end <= at {
            return Err(Invalidity::SignatureExpired { at: utc(end) });
        }
    }
    Ok(())
}

/// Whether `sig` says it was made by `key` or one of its subkeys (by fingerprint or key ID).
fn names_as_issuer(sig: &Signature, key: &SignedPublicKey) -> bool {
    let (fingerprints, ids) = (sig.issuer_fingerprint(), sig.issuer_key_id());
    let named = |k: &dyn KeyDetails| {
        fingerprints.iter().any(|f| **f == k.fingerprint())
            || ids.iter().any(|id| **id == k.legacy_key_id())
    };
    named(&key.primary_key) || key.public_subkeys.iter().any(|sub| named(&sub.key))
}

/// Whether `sig` was made by `key`'s primary key, by the issuer it names (a signature that
/// names none is kept, and verifying it decides).
fn self_issued(key: &SignedPublicKey, sig: &Signature) -> bool {
    let fingerprints = sig.issuer_fingerprint();
    let ids = sig.issuer_key_id();
    (fingerprints.is_empty() && ids.is_empty())
        || fingerprints.iter().any(|f| **f == key.primary_key.fingerprint())
        || ids.iter().any(|id| **id == key.primary_key.legacy_key_id())
}

/// `key` with only the signatures its own primary key made. Published keys, Debian's archive
/// keys among them, carry certifications by other people's keys, which a key file cannot
/// prove (their keys are not in it) and which say nothing about whether the key may sign; a
/// user ID left with no self-signature is not bound to the key and goes too. A revocation by
/// a designated revoker goes with them: only the key's own revocation counts.
fn own_signatures_only(mut key: SignedPublicKey) -> SignedPublicKey {
    let own = |sigs: &mut Vec<Signature>, key: &SignedPublicKey| {
        sigs.retain(|s| self_issued(key, s));
    };
    let mut details = std::mem::take(&mut key.details.users);
    for user in &mut details {
        own(&mut user.signatures, &key);
    }
    details.retain(|u| !u.signatures.is_empty());
    key.details.users = details;
    let mut attributes = std::mem::take(&mut key.details.user_attributes);
    for attribute in &mut attributes {
        own(&mut attribute.signatures, &key);
    }
    attributes.retain(|a| !a.signatures.is_empty());
    key.details.user_attributes = attributes;
    let mut direct = std::mem::take(&mut key.details.direct_signatures);
    own(&mut direct, &key);
    key.details.direct_signatures = direct;
    let mut revocations = std::mem::take(&mut key.details.revocation_signatures);
    own(&mut revocations, &key);
    key.details.revocation_signatures = revocations;
    key
}

impl Keyring {
    /// Reads every public key of an armored (`.asc`) or binary (`.gpg`) key file, checking
    /// every self-signature, binding and revocation in it.
    pub fn parse(bytes: &[u8]) -> Result<Keyring, SignatureError> {
        if bytes.len() as u64 > KEY_FILE_LIMIT {
            return Err(SignatureError::TooLarge { limit: KEY_FILE_LIMIT });
        }
        let armored = bytes.trim_ascii_start().starts_with(b"-----BEGIN");
        let keys: Vec<SignedPublicKey> = if armored {
            let (keys, _headers) =
                SignedPublicKey::from_armor_many(bytes).map_err(SignatureError::Key)?;
            keys.collect::<Result<_, _>>().map_err(SignatureError::Key)?
        } else {
            SignedPublicKey::from_bytes_many(bytes)
                .map_err(SignatureError::Key)?
                .collect::<Result<_, _>>()
                .map_err(SignatureError::Key)?
        };
        if keys.is_empty() {
            return Err(SignatureError::NoKey);
        }
        let keys: Vec<SignedPublicKey> = keys.into_iter().map(own_signatures_only).collect();
        for key in &keys {
            key.verify_bindings().map_err(SignatureError::Key)?;
        }
        Ok(Keyring { keys })
    }

    /// Primary key fingerprints, for messages.
    pub fn fingerprints(&self) -> String {
        self.keys.iter().map(|k| fingerprint(&k.primary_key)).collect::<Vec<_>>().join(", ")
    }

    /// Refuses a key file none of whose keys (primary or subkey) may sign at `at`, naming
    /// each key and why.
    pub fn check_usable(&self, at: SystemTime) -> Result<(), SignatureError> {
        let at = epoch_secs(at);
        let mut reasons = Vec::new();
        for key in &self.keys {
            let primary = primary_valid(key, at, true);
            let Err(why) = primary else { return Ok(()) };
            // A subkey's reason tells more than the primary's "not for signing", unless
            // the primary itself is dead.
            let mut reason = why;
            for sub in &key.public_subkeys {
                match subkey_valid(key, sub, at) {
                    Ok(()) => return Ok(()),
                    Err(Invalidity::NotSigning { .. }) => {}
                    Err(why) => reason = why,
                }
            }
            reasons.push((fingerprint(&key.primary_key), reason));
        }
        Err(SignatureError::NoUsableKey { reasons: Reasons(reasons) })
    }

    /// Whether a trusted key or subkey made one of `signatures` over `data` and may sign it
    /// at `at`. A signature made by a trusted key that may not is refused naming that key
    /// and why, unless another one passes. A signature that names a trusted key as its issuer
    /// but does not verify refuses the whole text, whatever the others say, as apt refuses a
    /// `BADSIG`: the text or that signature was altered on the way.
    fn verifies<'a>(
        &self,
        signatures: impl Iterator<Item = &'a Signature> + Clone,
        data: &[u8],
        at: SystemTime,
    ) -> Result<(), SignatureError> {
        let found = signatures.clone().count();
        if found > MAX_SIGNATURES {
            return Err(SignatureError::TooManySignatures { found, max: MAX_SIGNATURES });
        }
        let at = epoch_secs(at);
        let mut good = false;
        let mut refused = None;
        for sig in signatures {
            match self.judge(sig, data, at) {
                Some((_, Ok(()))) => good = true,
                Some((signer, Err(reason))) => {
                    refused.get_or_insert(SignatureError::Invalid {
                        signer: Box::new(signer),
                        reason: Box::new(reason),
                    });
                }
                None => {
                    if let Some(key) = self.keys.iter().find(|key| names_as_issuer(sig, key)) {
                        let key = fingerprint(&key.primary_key);
                        return Err(SignatureError::Bad { key });
                    }
                }
            }
        }
        if good {
            return Ok(());
        }
        Err(refused
            .unwrap_or_else(|| SignatureError::Untrusted { fingerprints: self.fingerprints() }))
    }

    /// The trusted key or subkey that made `sig` over `data`, and whether it may sign at
    /// `at`; `None` when no trusted key made it.
    fn judge(
        &self,
        sig: &Signature,
        data: &[u8],
        at: u64,
    ) -> Option<(Signer, Result<(), Invalidity>)> {
        self.keys.iter().find_map(|key| {
            if sig.verify(&key.primary_key, data).is_ok() {
                let signer = Signer { primary: fingerprint(&key.primary_key), subkey: None };
                let valid = primary_valid(key, at, true)
                    .and_then(|()| signature_valid(sig, key.primary_key.created_at(), at));
                return Some((signer, valid));
            }
            let sub = key.public_subkeys.iter().find(|sub| sig.verify(&sub.key, data).is_ok())?;
            let signer = Signer {
                primary: fingerprint(&key.primary_key),
                subkey: Some(fingerprint(&sub.key)),
            };
            let valid = subkey_valid(key, sub, at)
                .and_then(|()| signature_valid(sig, sub.key.created_at(), at));
            Some((signer, valid))
        })
    }

    /// Verifies a clearsigned `InRelease` at `at` and returns its signed text (with `\n`
    /// endings).
    pub fn verify_clearsigned(&self, text: &str, at: SystemTime) -> Result<String, SignatureError> {
        let (message, _headers) =
            CleartextSignedMessage::from_string(text).map_err(SignatureError::Clearsigned)?;
        let signed = message.signed_text();
        self.verifies(message.signatures().iter(), signed.as_bytes(), at)?;
        Ok(signed.replace("\r\n", "\n"))
    }

    /// Verifies a detached signature (`Release.gpg`, armored or binary) over `data` at `at`.
    pub fn verify_detached(
        &self,
        data: &[u8],
        signature: &[u8],
        at: SystemTime,
    ) -> Result<(), SignatureError> {
        let signatures: Vec<DetachedSignature> =
            if signature.trim_ascii_start().starts_with(b"-----BEGIN") {
                let (sigs, _) = DetachedSignature::from_armor_many(signature)
                    .map_err(SignatureError::Detached)?;
                sigs.collect::<Result<_, _>>().map_err(SignatureError::Detached)?
            } else {
                DetachedSignature::from_bytes_many(signature)
                    .map_err(SignatureError::Detached)?
                    .collect::<Result<_, _>>()
                    .map_err(SignatureError::Detached)?
            };
        self.verifies(signatures.iter().map(|s| &s.signature), data, at)
    }
}
