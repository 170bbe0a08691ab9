//! Development identities and certificate digests.
//!
//! This module owns everything wtchat knows about TLS certificates:
//!
//! - **development certificates** ([`DevCert`]): self-signed ECDSA P-256 certificates
//!   valid at most [`MAX_DAYS`] days, which is what browsers require before they accept a
//!   certificate by its SHA-256 digest (`serverCertificateHashes`) instead of by a chain to
//!   a trusted CA. A page given the digest connects over WebTransport with no flag, no CA
//!   install and no warning. They live as [`CERT_FILE`] and [`KEY_FILE`] in a directory
//!   (`certs/` by default), are written atomically, and are renewed by
//!   [`load_or_create`] before they run out;
//! - **digests**: the SHA-256 of a certificate's DER, as bytes and as lowercase hex
//!   ([`hex`]), which is what the server's configuration endpoint hands to clients;
//! - **production certificates**: a CA-issued chain and its key loaded from PEM files
//!   ([`load_identity`]). Those cannot be pinned by digest (browsers refuse hashes for
//!   anything valid longer than 14 days), so clients get no digest for them.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    PKCS_ECDSA_P256_SHA256, PublicKeyData,
};
use time::OffsetDateTime;
use wtransport::Identity;
use wtransport::tls::error::PemLoadError;
use wtransport::tls::{Certificate, CertificateChain, PrivateKey};
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Longest validity, in days, of a development certificate.
///
/// Browsers accept a certificate through `serverCertificateHashes` only when the span
/// `not_after - not_before` is at most 14 days (W3C WebTransport; Chromium enforces it),
/// so a longer-lived certificate would make every WebTransport attempt fail with the
/// uninformative "Opening handshake failed.".
pub const MAX_DAYS: u32 = 14;

/// Subject alternative names of a default development certificate.
///
/// Browsers do not check the name of a certificate pinned by digest, but other clients
/// (curl, Rust test clients verifying names) do; these are the names a developer's
/// browser uses for the local machine, including `::1`, which Chromium dials for
/// `https://localhost`.
pub const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// File name of the development certificate (PEM) inside the certificate directory.
///
/// Fixed so that `wtchat certs` and `wtchat serve` find each other's files.
pub const CERT_FILE: &str = "cert.pem";

/// File name of the development private key (PKCS#8 PEM) inside the certificate directory.
///
/// Fixed so that `wtchat certs` and `wtchat serve` find each other's files; the file is
/// created with mode 0600 on unix because it is a secret.
pub const KEY_FILE: &str = "key.pem";

/// How far back `not_before` is set from the moment of generation.
///
/// Browsers reject a certificate that is not valid yet; a minute absorbs small clock
/// differences between the machine that generates and the one that connects. It counts
/// against the validity span, which browsers measure from `not_before`.
const BACKDATE: Duration = Duration::from_secs(60);

/// Seconds in a day, for turning `--days` into a span.
const SECS_PER_DAY: u64 = 86_400;

/// The longest validity span browsers accept for a certificate pinned by digest.
const MAX_SPAN: Duration = Duration::from_secs(MAX_DAYS as u64 * SECS_PER_DAY);

/// How many times [`DevCert::load`] re-reads a pair whose key does not match its
/// certificate before reporting it: a concurrent [`DevCert::write`] replaces the two files
/// one after the other, so a reader can, rarely, see one old and one new file.
const LOAD_ATTEMPTS: usize = 3;

/// Everything that can go wrong while making, storing or loading certificates.
#[derive(Debug)]
pub enum CertError {
    /// A validity in days outside `1..=MAX_DAYS` was asked for.
    Days(u32),
    /// A validity span of zero (under a second) or longer than [`MAX_DAYS`] days was asked for.
    Validity(Duration),
    /// A subject alternative name that cannot go into a certificate (DNS names must be ASCII).
    San {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// The certificate or key could not be generated.
    Generate(String),
    /// A file or directory operation failed.
    Io {
        /// What was being done: "read", "write", "create directory", ...
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A certificate or key is not what it should be (bad PEM, not a certificate, not a
    /// PKCS#8 key, ...).
    Invalid {
        /// The file, or "certificate"/"private key" for in-memory PEM.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file does not hold the key of the certificate file.
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertError::Days(0) => write!(
                f,
                "--days 0 is refused: a certificate must be valid at least 1 day and at most \
                 {MAX_DAYS} days (browsers accept serverCertificateHashes only up to {MAX_DAYS} days)"
            ),
            CertError::Days(days) => write!(
                f,
                "--days {days} is refused: browsers accept serverCertificateHashes only for \
                 certificates valid at most {MAX_DAYS} days"
            ),
            CertError::Validity(span) => write!(
                f,
                "a validity of {} s is refused: it must be at least 1 s and at most {MAX_DAYS} days \
                 ({} s), the longest browsers accept for serverCertificateHashes",
                span.as_secs(),
                MAX_SPAN.as_secs()
            ),
            CertError::San { name, reason } => {
                write!(f, "subject alternative name {name:?} is refused: {reason}")
            }
            CertError::Generate(reason) => {
                write!(f, "cannot generate a development certificate: {reason}")
            }
            CertError::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            CertError::Invalid { what, reason } => write!(f, "{what}: {reason}"),
            CertError::Mismatch { cert, key } => write!(
                f,
                "{} is not the private key of {}: the two files do not belong together",
                key.display(),
                cert.display()
            ),
        }
    }
}

impl std::error::Error for CertError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CertError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A development certificate and its key, in PEM, with what the server needs to know of it.
///
/// `Debug` leaves the private key out, so a `DevCert` can be logged.
#[derive(Clone)]
pub struct DevCert {
    /// The self-signed certificate, one `CERTIFICATE` PEM block.
    pub cert_pem: String,
    /// Its private key, one PKCS#8 `PRIVATE KEY` PEM block. A secret.
    pub key_pem: String,
    /// SHA-256 of the certificate's DER: what browsers get as `serverCertificateHashes`.
    pub digest: [u8; 32],
    /// Start of validity, to the second (X.509 has no finer resolution).
    pub not_before: SystemTime,
    /// End of validity, to the second; renewal is scheduled from it.
    pub not_after: SystemTime,
}

impl fmt::Debug for DevCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCert")
            .field("digest", &self.digest_hex())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl DevCert {
    /// Generates a self-signed ECDSA P-256 certificate valid `days` days.
    ///
    /// `not_before` is a minute in the past (browsers reject a certificate that is not valid
    /// yet) and `not_after = not_before + days`, so the span browsers check is exactly
    /// `days`. Each SAN that parses as an IP address becomes an IP SAN, any other a DNS
    /// name. `days` must be in `1..=MAX_DAYS`, else [`CertError::Days`].
    pub fn generate(sans: &[String], days: u32) -> Result<DevCert, CertError> {
        if !(1..=MAX_DAYS).contains(&days) {
            return Err(CertError::Days(days));
        }
        Self::generate_with_validity(sans, Duration::from_secs(u64::from(days) * SECS_PER_DAY))
    }

    /// Like [`DevCert::generate`], with the validity span given exactly (whole seconds;
    /// fractions are dropped); for tests and rotation tests that need short-lived
    /// certificates.
    ///
    /// The span must be at least a second and at most [`MAX_DAYS`] days, else
    /// [`CertError::Validity`]. It starts at `not_before`, a minute in the past, so a
    /// span of a minute or less gives a certificate that has already expired (which
    /// is what an expiry test wants).
    pub fn generate_with_validity(
        sans: &[String],
        validity: Duration,
    ) -> Result<DevCert, CertError> {
        let span = Duration::from_secs(validity.as_secs());
        if span.is_zero() || span > MAX_SPAN {
            return Err(CertError::Validity(validity));
        }

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| CertError::Generate("the system clock is before 1970".into()))?;
        // Whole seconds, so that the times we report are the ones the certificate holds.
        let not_before_unix = now.as_secs().saturating_sub(BACKDATE.as_secs());
        let not_after_unix = not_before_unix + span.as_secs();

        let mut params = CertificateParams::default();
        params.subject_alt_names = sans
            .iter()
            .map(|name| san(name))
            .collect::<Result<Vec<_>, _>>()?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "wtchat development certificate");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = offset_date_time(not_before_unix)?;
        params.not_after = offset_date_time(not_after_unix)?;

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CertError::Generate(e.to_string()))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| CertError::Generate(e.to_string()))?;

        Ok(DevCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            digest: digest_of(cert.der().to_vec(), "certificate")?,
            not_before: UNIX_EPOCH + Duration::from_secs(not_before_unix),
            not_after: UNIX_EPOCH + Duration::from_secs(not_after_unix),
        })
    }

    /// Writes `dir/cert.pem` and `dir/key.pem`, creating `dir` if needed.
    ///
    /// Each file is written to a temporary file in `dir`, flushed to disk and renamed over
    /// the old one, so nobody ever reads a half-written file; the key's temporary file is
    /// created with mode 0600 (on unix), so the secret is never readable by others, not
    /// even for a moment.
    ///
    /// Order: both temporary files are written first, then the **key is renamed into
    /// place before the certificate**. The certificate is what announces a new pair (its
    /// digest is what clients pin), so once a reader sees the new certificate the new key
    /// is already there; a reader that reads the certificate first then the key (as
    /// [`DevCert::load`] does) can only get an old certificate with a new key, in the
    /// instant between the two renames, and `load` detects that mismatch and reads again.
    /// Two files cannot be replaced atomically together; this keeps the window to two
    /// `rename` calls and makes it detectable.
    pub fn write(&self, dir: &Path) -> Result<(), CertError> {
        fs::create_dir_all(dir).map_err(|source| CertError::Io {
            action: "create directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let key_tmp = write_temp(dir, KEY_FILE, self.key_pem.as_bytes(), 0o600)?;
        let cert_tmp = match write_temp(dir, CERT_FILE, self.cert_pem.as_bytes(), 0o644) {
            Ok(path) => path,
            Err(e) => {
                let _ = fs::remove_file(&key_tmp);
                return Err(e);
            }
        };
        if let Err(e) = rename(&key_tmp, &dir.join(KEY_FILE)) {
            let _ = fs::remove_file(&key_tmp);
            let _ = fs::remove_file(&cert_tmp);
            return Err(e);
        }
        if let Err(e) = rename(&cert_tmp, &dir.join(CERT_FILE)) {
            let _ = fs::remove_file(&cert_tmp);
            return Err(e);
        }
        // Make the renames themselves durable; best effort (not every platform can open
        // a directory), the files are already complete either way.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Reads back `dir/cert.pem` and `dir/key.pem`.
    ///
    /// `Ok(None)` when either file is missing. Otherwise parses the certificate (its
    /// `notBefore`/`notAfter` and the SHA-256 of its DER) and checks that the key is a
    /// PKCS#8 key belonging to it ([`CertError::Mismatch`] if not, after re-reading a few
    /// times in case a [`DevCert::write`] was half-way through).
    pub fn load(dir: &Path) -> Result<Option<DevCert>, CertError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let mut attempt = 1;
        loop {
            // Certificate first, then key: see `write` for why this order.
            let Some(cert_pem) = read_optional(&cert_path)? else {
                return Ok(None);
            };
            let Some(key_pem) = read_optional(&key_path)? else {
                return Ok(None);
            };
            match parse_pair(cert_pem, key_pem, &cert_path, &key_path) {
                Err(CertError::Mismatch { .. }) if attempt < LOAD_ATTEMPTS => {
                    attempt += 1;
                    std::thread::yield_now();
                }
                result => return result.map(Some),
            }
        }
    }

    /// The wtransport identity for this certificate and key, ready for a server
    /// configuration or `Endpoint::reload_config`. Parses the PEM; no file I/O.
    pub fn identity(&self) -> Result<Identity, CertError> {
        let cert_der = pem_block(&self.cert_pem, "CERTIFICATE", "certificate")?;
        let key_der = pem_block(&self.key_pem, "PRIVATE KEY", "private key")?;
        let cert = Certificate::from_der(cert_der).map_err(|e| CertError::Invalid {
            what: "certificate".into(),
            reason: e.to_string(),
        })?;
        Ok(Identity::new(
            CertificateChain::single(cert),
            PrivateKey::from_der_pkcs8(key_der),
        ))
    }

    /// Lowercase hex of the digest, no separators: the form `/wtchat/config` serves and
    /// `wtchat certs` prints.
    pub fn digest_hex(&self) -> String {
        hex(&self.digest)
    }

    /// Time left until `not_after`; zero once the certificate has expired.
    pub fn remaining(&self) -> Duration {
        self.not_after
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }

    /// Why browsers would refuse to pin this certificate by digest, if they would: a span
    /// over [`MAX_DAYS`] days, a start in the future, or a key other than ECDSA P-256.
    fn unpinnable_reason(&self) -> Option<String> {
        let span = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        if span > MAX_SPAN {
            return Some(format!(
                "it is valid for {}, longer than the {MAX_DAYS} days browsers accept for \
                 serverCertificateHashes",
                human(span)
            ));
        }
        if self.not_before > SystemTime::now() {
            return Some("it is not valid yet (was the clock set back?)".into());
        }
        match KeyPair::from_pem(&self.key_pem) {
            Ok(key) if key.algorithm() == &PKCS_ECDSA_P256_SHA256 => None,
            _ => Some("its key is not ECDSA P-256, the only kind browsers pin by digest".into()),
        }
    }
}

/// Loads the development certificate in `dir`, or generates and writes a fresh one
/// ([`DEFAULT_SANS`], [`MAX_DAYS`] days) when there is none, when the pair is unusable
/// (bad PEM, key not matching the certificate, a certificate browsers would not pin by
/// digest), or when it has less than `min_remaining` left.
///
/// Returns the certificate and whether it was (re)generated, so the caller can say so.
/// Errors reading the files (other than their absence) are returned rather than papered
/// over: replacing files this process cannot read would hide a permissions problem.
/// A `min_remaining` close to [`MAX_DAYS`] days makes every call regenerate, since a fresh
/// certificate has at most that much left.
pub fn load_or_create(dir: &Path, min_remaining: Duration) -> Result<(DevCert, bool), CertError> {
    let why = match DevCert::load(dir) {
        Ok(Some(cert)) => {
            if let Some(reason) = cert.unpinnable_reason() {
                tracing::warn!(dir = %dir.display(), "replacing the development certificate: {reason}");
                "replaced a certificate browsers would refuse"
            } else if cert.remaining() < min_remaining {
                tracing::info!(
                    dir = %dir.display(),
                    remaining = %human(cert.remaining()),
                    min_remaining = %human(min_remaining),
                    "development certificate expires soon; renewing it"
                );
                "renewed"
            } else {
                tracing::info!(
                    dir = %dir.display(),
                    digest = %cert.digest_hex(),
                    remaining = %human(cert.remaining()),
                    "using the existing development certificate"
                );
                return Ok((cert, false));
            }
        }
        Ok(None) => "created",
        Err(e @ CertError::Io { .. }) => return Err(e),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "replacing an unusable development certificate: {e}");
            "replaced an unusable pair"
        }
    };
    let sans: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    let cert = DevCert::generate(&sans, MAX_DAYS)?;
    cert.write(dir)?;
    tracing::info!(
        dir = %dir.display(),
        digest = %cert.digest_hex(),
        valid_for = %human(cert.remaining()),
        "development certificate {why}"
    );
    Ok((cert, true))
}

/// Loads a real (CA-issued) certificate chain and its key from PEM files, for production.
///
/// The chain file holds the leaf certificate first, then its intermediates; the key may
/// be PKCS#8, SEC1 or PKCS#1. Errors name the file concerned. A file with no certificate
/// is refused (wtransport alone would accept it as an empty chain and fail every
/// handshake), and so is a PKCS#8 key that does not belong to the leaf (other key
/// formats are not checked). Such a certificate is trusted through its chain, not pinned
/// by digest.
pub async fn load_identity(cert: &Path, key: &Path) -> Result<Identity, CertError> {
    let identity = Identity::load_pemfiles(cert, key)
        .await
        .map_err(|e| match e {
            PemLoadError::FileError { file, error } => CertError::Io {
                action: "read",
                path: file,
                source: error,
            },
            PemLoadError::NoCertificateSection => no_certificate(cert),
            PemLoadError::NoPrivateKeySection => CertError::Invalid {
                what: key.display().to_string(),
                reason: "no PRIVATE KEY block found (is this the key file?)".into(),
            },
            PemLoadError::InvalidCertificateChain { index, error } => CertError::Invalid {
                what: cert.display().to_string(),
                reason: format!(
                    "certificate #{} of the chain is invalid: {error}",
                    index + 1
                ),
            },
        })?;
    let Some(leaf) = identity.certificate_chain().as_slice().first() else {
        return Err(no_certificate(cert));
    };
    if let Ok(key_pair) = KeyPair::try_from(identity.private_key().secret_der()) {
        let leaf_key = X509Certificate::from_der(leaf.der())
            .map(|(_, x509)| x509.public_key().subject_public_key.data.to_vec())
            .map_err(|e| CertError::Invalid {
                what: cert.display().to_string(),
                reason: format!("not an X.509 certificate: {e}"),
            })?;
        if key_pair.der_bytes() != leaf_key.as_slice() {
            return Err(CertError::Mismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            });
        }
    }
    Ok(identity)
}

/// When the leaf certificate of `identity` expires; None if it cannot be read.
pub(crate) fn not_after(identity: &Identity) -> Option<SystemTime> {
    let leaf = identity.certificate_chain().as_slice().first()?;
    let (_, x509) = X509Certificate::from_der(leaf.der()).ok()?;
    let secs = u64::try_from(x509.validity().not_after.timestamp()).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// The error for a certificate file without a certificate in it.
fn no_certificate(cert: &Path) -> CertError {
    CertError::Invalid {
        what: cert.display().to_string(),
        reason: "no CERTIFICATE block found (is this the certificate file?)".into(),
    }
}

/// Formats a digest as lowercase hex, two digits a byte, no separators.
pub fn hex(digest: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// One SAN: an IP SAN when `name` parses as an address, else a DNS name.
fn san(name: &str) -> Result<rcgen::SanType, CertError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(rcgen::SanType::IpAddress(ip));
    }
    let dns = name.to_string().try_into().map_err(|_| CertError::San {
        name: name.to_string(),
        reason: "a DNS name must be ASCII (use its punycode form)".into(),
    })?;
    Ok(rcgen::SanType::DnsName(dns))
}

/// Unix seconds to the date type rcgen wants.
fn offset_date_time(unix: u64) -> Result<OffsetDateTime, CertError> {
    i64::try_from(unix)
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .ok_or_else(|| CertError::Generate(format!("time {unix} s after 1970 is out of range")))
}

/// SHA-256 of a certificate's DER, checking on the way that it parses as a certificate.
fn digest_of(der: Vec<u8>, what: &str) -> Result<[u8; 32], CertError> {
    let cert = Certificate::from_der(der).map_err(|e| CertError::Invalid {
        what: what.to_string(),
        reason: e.to_string(),
    })?;
    Ok(*cert.hash().as_ref())
}

/// The contents of the first PEM block labelled `label` in `text`.
fn pem_block(text: &str, label: &str, what: &str) -> Result<Vec<u8>, CertError> {
    let invalid = |reason: String| CertError::Invalid {
        what: what.to_string(),
        reason,
    };
    let mut seen = Vec::new();
    for block in Pem::iter_from_buffer(text.as_bytes()) {
        let block = block.map_err(|e| invalid(format!("malformed PEM: {e}")))?;
        if block.label == label {
            return Ok(block.contents);
        }
        seen.push(block.label);
    }
    Err(invalid(if seen.is_empty() {
        format!("no {label} PEM block found")
    } else {
        format!("no {label} PEM block found (found: {})", seen.join(", "))
    }))
}

/// Parses a certificate PEM and key PEM read from `cert_path` and `key_path` into a
/// [`DevCert`], checking that the key belongs to the certificate.
fn parse_pair(
    cert_pem: String,
    key_pem: String,
    cert_path: &Path,
    key_path: &Path,
) -> Result<DevCert, CertError> {
    let cert_what = cert_path.display().to_string();
    let key_what = key_path.display().to_string();
    let cert_der = pem_block(&cert_pem, "CERTIFICATE", &cert_what)?;
    let key_der = pem_block(&key_pem, "PRIVATE KEY", &key_what)?;

    let (not_before, not_after, public_key) = {
        let (_, x509) = X509Certificate::from_der(&cert_der).map_err(|e| CertError::Invalid {
            what: cert_what.clone(),
            reason: format!("not an X.509 certificate: {e}"),
        })?;
        let validity = x509.validity();
        (
            system_time(validity.not_before.timestamp(), &cert_what)?,
            system_time(validity.not_after.timestamp(), &cert_what)?,
            x509.public_key().subject_public_key.data.to_vec(),
        )
    };

    let key = KeyPair::try_from(key_der.as_slice()).map_err(|e| CertError::Invalid {
        what: key_what.clone(),
        reason: format!("not a usable PKCS#8 private key: {e}"),
    })?;
    if key.der_bytes() != public_key.as_slice() {
        return Err(CertError::Mismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        });
    }

    Ok(DevCert {
        digest: digest_of(cert_der, &cert_what)?,
        cert_pem,
        key_pem,
        not_before,
        not_after,
    })
}

/// Unix seconds (possibly negative) read from a certificate, as a `SystemTime`.
fn system_time(unix: i64, what: &str) -> Result<SystemTime, CertError> {
    let magnitude = Duration::from_secs(unix.unsigned_abs());
    let time = if unix >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    time.ok_or_else(|| CertError::Invalid {
        what: what.to_string(),
        reason: format!("validity time {unix} is out of range"),
    })
}

/// The file's contents, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, CertError> {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| CertError::Invalid {
                what: path.display().to_string(),
                reason: "not a PEM file (not UTF-8 text)".into(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CertError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Distinguishes temporary files of concurrent writers within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `contents` to a fresh temporary file next to `dir/name`, created with `mode`
/// (on unix) and flushed to disk, and returns its path. The name,
/// `.<name>.<pid>.<n>.tmp`, is unique to this writer and ignored by `certs/.gitignore`.
fn write_temp(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<PathBuf, CertError> {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let io_err = |source| CertError::Io {
        action: "write",
        path: path.clone(),
        source,
    };
    let mut file = options.open(&path).map_err(io_err)?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    drop(file);
    if let Err(source) = written {
        let _ = fs::remove_file(&path);
        return Err(io_err(source));
    }
    Ok(path)
}

/// Renames `from` over `to`, replacing it atomically.
fn rename(from: &Path, to: &Path) -> Result<(), CertError> {
    fs::rename(from, to).map_err(|source| CertError::Io {
        action: "replace",
        path: to.to_path_buf(),
        source,
    })
}

/// A duration for people: "13 d 23 h", "59 min", "42 s".
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s >= SECS_PER_DAY => format!("{} d {} h", s / SECS_PER_DAY, s % SECS_PER_DAY / 3600),
        s if s >= 3600 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path = std::env::temp_dir().join(format!(
                "wtchat-certs-{name}-{}-{}-{nanos}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&path).expect("create test dir");
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn default_sans() -> Vec<String> {
        DEFAULT_SANS.iter().map(|s| s.to_string()).collect()
    }

    fn unix(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
    }

    #[test]
    fn round_trip_keeps_digest_and_validity() {
        let dir = TempDir::new("roundtrip");
        let cert = DevCert::generate(&default_sans(), 3).expect("generate");
        cert.write(&dir.0).expect("write");
        let loaded = DevCert::load(&dir.0).expect("load").expect("files exist");
        assert_eq!(loaded.digest, cert.digest);
        assert_eq!(unix(loaded.not_after), unix(cert.not_after));
        assert_eq!(unix(loaded.not_before), unix(cert.not_before));
        assert_eq!(loaded.cert_pem, cert.cert_pem);
        assert_eq!(loaded.key_pem, cert.key_pem);
        // Nothing but the two files is left behind.
        let mut names: Vec<String> = fs::read_dir(&dir.0)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [CERT_FILE, KEY_FILE]);
    }

    #[test]
    fn write_replaces_an_existing_pair() {
        let dir = TempDir::new("replace");
        let first = DevCert::generate(&default_sans(), 1).expect("generate");
        first.write(&dir.0).expect("write");
        let second = DevCert::generate(&default_sans(), 1).expect("generate");
        second.write(&dir.0).expect("write again");
        let loaded = DevCert::load(&dir.0).expect("load").expect("files exist");
        assert_eq!(loaded.digest, second.digest);
        assert_ne!(loaded.digest, first.digest);
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("mode");
        let nested = dir.0.join("certs");
        DevCert::generate(&default_sans(), 1)
            .expect("generate")
            .write(&nested)
            .expect("write creates the directory");
        let mode = fs::metadata(nested.join(KEY_FILE))
            .expect("key exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn days_out_of_range_are_refused() {
        for days in [0, 15, 365] {
            let err = DevCert::generate(&default_sans(), days).expect_err("refused");
            assert!(matches!(err, CertError::Days(d) if d == days), "{err:?}");
            let message = err.to_string();
            assert!(message.contains("14"), "{message}");
            assert!(message.contains(&format!("--days {days}")), "{message}");
        }
        assert!(DevCert::generate(&default_sans(), MAX_DAYS).is_ok());
    }

    #[test]
    fn validity_out_of_range_is_refused() {
        for span in [
            Duration::ZERO,
            Duration::from_millis(999),
            MAX_SPAN + Duration::from_secs(1),
        ] {
            let err = DevCert::generate_with_validity(&default_sans(), span).expect_err("refused");
            assert!(matches!(err, CertError::Validity(_)), "{err:?}");
            assert!(err.to_string().contains("14 days"), "{err}");
        }
    }

    #[test]
    fn span_is_exactly_the_days_asked_and_starts_in_the_past() {
        let before = SystemTime::now();
        let cert = DevCert::generate(&default_sans(), MAX_DAYS).expect("generate");
        let span = cert
            .not_after
            .duration_since(cert.not_before)
            .expect("ordered");
        assert_eq!(
            span,
            Duration::from_secs(u64::from(MAX_DAYS) * SECS_PER_DAY)
        );
        assert!(cert.not_before < before);
        assert!(cert.not_before >= before - BACKDATE - Duration::from_secs(2));
        // And the certificate itself says so, not only the struct.
        let der = pem_block(&cert.cert_pem, "CERTIFICATE", "test").expect("pem");
        let (_, x509) = X509Certificate::from_der(&der).expect("x509");
        let v = x509.validity();
        assert_eq!(
            v.not_after.timestamp() - v.not_before.timestamp(),
            i64::from(MAX_DAYS) * 86_400
        );
        assert!(cert.remaining() > MAX_SPAN - BACKDATE - Duration::from_secs(5));
    }

    #[test]
    fn load_or_create_renews_only_when_needed() {
        let dir = TempDir::new("renew");
        let short = DevCert::generate_with_validity(&default_sans(), Duration::from_secs(3600))
            .expect("generate");
        short.write(&dir.0).expect("write");

        let (kept, regenerated) =
            load_or_create(&dir.0, Duration::from_secs(60)).expect("load_or_create");
        assert!(!regenerated);
        assert_eq!(kept.digest, short.digest);

        let (renewed, regenerated) =
            load_or_create(&dir.0, Duration::from_secs(SECS_PER_DAY)).expect("load_or_create");
        assert!(regenerated);
        assert_ne!(renewed.digest, short.digest);
        assert!(renewed.remaining() > Duration::from_secs(13 * SECS_PER_DAY));
        let on_disk = DevCert::load(&dir.0).expect("load").expect("files exist");
        assert_eq!(on_disk.digest, renewed.digest);
    }

    #[test]
    fn load_or_create_creates_when_missing_and_replaces_garbage() {
        let dir = TempDir::new("create");
        assert!(DevCert::load(&dir.0).expect("load").is_none());
        let (created, regenerated) = load_or_create(&dir.0, Duration::ZERO).expect("create");
        assert!(regenerated);

        fs::write(dir.0.join(CERT_FILE), "not a certificate").expect("overwrite");
        assert!(matches!(
            DevCert::load(&dir.0),
            Err(CertError::Invalid { .. })
        ));
        let (replaced, regenerated) = load_or_create(&dir.0, Duration::ZERO).expect("replace");
        assert!(regenerated);
        assert_ne!(replaced.digest, created.digest);
    }

    #[test]
    fn mismatched_pair_is_detected_and_replaced() {
        let dir = TempDir::new("mismatch");
        let a = DevCert::generate(&default_sans(), 1).expect("generate");
        let b = DevCert::generate(&default_sans(), 1).expect("generate");
        a.write(&dir.0).expect("write");
        fs::write(dir.0.join(KEY_FILE), &b.key_pem).expect("swap key");
        let err = DevCert::load(&dir.0).expect_err("mismatch");
        assert!(matches!(err, CertError::Mismatch { .. }), "{err:?}");
        assert!(err.to_string().contains(KEY_FILE), "{err}");

        let (fresh, regenerated) = load_or_create(&dir.0, Duration::ZERO).expect("replace");
        assert!(regenerated);
        assert_ne!(fresh.digest, a.digest);
    }

    #[test]
    fn too_long_certificate_is_replaced() {
        let dir = TempDir::new("toolong");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::new(default_sans()).expect("params");
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::days(90);
        let cert = params.self_signed(&key).expect("sign");
        fs::write(dir.0.join(CERT_FILE), cert.pem()).expect("write cert");
        fs::write(dir.0.join(KEY_FILE), key.serialize_pem()).expect("write key");
        let loaded = DevCert::load(&dir.0).expect("load").expect("files exist");
        assert!(loaded.remaining() > Duration::from_secs(80 * SECS_PER_DAY));

        let (fresh, regenerated) = load_or_create(&dir.0, Duration::ZERO).expect("replace");
        assert!(regenerated);
        let span = fresh
            .not_after
            .duration_since(fresh.not_before)
            .expect("ordered");
        assert!(span <= MAX_SPAN);
    }

    #[test]
    fn identity_hash_is_the_digest() {
        let cert = DevCert::generate(&default_sans(), 2).expect("generate");
        let identity = cert.identity().expect("identity");
        let chain = identity.certificate_chain().as_slice();
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].hash().as_ref(), &cert.digest);
    }

    #[test]
    fn digest_hex_is_lowercase_without_separators() {
        let cert = DevCert::generate(&default_sans(), 1).expect("generate");
        let text = cert.digest_hex();
        assert_eq!(text.len(), 64);
        assert!(
            text.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
            "{text}"
        );
        assert_eq!(text, hex(&cert.digest));
        let mut digest = [0u8; 32];
        digest[0] = 0xab;
        digest[31] = 0x0f;
        assert_eq!(&hex(&digest)[..2], "ab");
        assert_eq!(&hex(&digest)[62..], "0f");
    }

    #[test]
    fn sans_hold_dns_names_and_ip_addresses() {
        let sans = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
            "chat.example".to_string(),
        ];
        let cert = DevCert::generate(&sans, 1).expect("generate");
        let der = pem_block(&cert.cert_pem, "CERTIFICATE", "test").expect("pem");
        let (_, x509) = X509Certificate::from_der(&der).expect("x509");
        let ext = x509
            .subject_alternative_name()
            .expect("well-formed")
            .expect("has SANs");
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(n) => dns.push(n.to_string()),
                GeneralName::IPAddress(octets) => ips.push(octets.to_vec()),
                other => panic!("unexpected SAN {other:?}"),
            }
        }
        assert_eq!(dns, ["localhost", "chat.example"]);
        assert!(ips.contains(&vec![127, 0, 0, 1]));
        let mut v6_loopback = vec![0u8; 16];
        v6_loopback[15] = 1;
        assert!(ips.contains(&v6_loopback));
    }

    #[test]
    fn non_ascii_san_is_refused() {
        let err = DevCert::generate(&["chät.example".to_string()], 1).expect_err("refused");
        assert!(matches!(err, CertError::San { .. }), "{err:?}");
    }

    #[test]
    fn load_identity_names_the_missing_file() {
        let dir = TempDir::new("identity");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let missing = dir.0.join("fullchain.pem");
        let err = rt
            .block_on(load_identity(&missing, &dir.0.join("privkey.pem")))
            .expect_err("missing");
        assert!(err.to_string().contains("fullchain.pem"), "{err}");

        let cert = DevCert::generate(&default_sans(), 1).expect("generate");
        cert.write(&dir.0).expect("write");
        let identity = rt
            .block_on(load_identity(&dir.0.join(CERT_FILE), &dir.0.join(KEY_FILE)))
            .expect("loads");
        assert_eq!(
            identity.certificate_chain().as_slice()[0].hash().as_ref(),
            &cert.digest
        );
        let err = rt
            .block_on(load_identity(&dir.0.join(KEY_FILE), &dir.0.join(KEY_FILE)))
            .expect_err("key is no certificate");
        assert!(matches!(err, CertError::Invalid { .. }), "{err:?}");
        assert!(err.to_string().contains(KEY_FILE), "{err}");

        let other = DevCert::generate(&default_sans(), 1).expect("generate");
        let other_key = dir.0.join("other-key.pem");
        fs::write(&other_key, &other.key_pem).expect("write other key");
        let err = rt
            .block_on(load_identity(&dir.0.join(CERT_FILE), &other_key))
            .expect_err("key of another certificate");
        assert!(matches!(err, CertError::Mismatch { .. }), "{err:?}");
    }
}
