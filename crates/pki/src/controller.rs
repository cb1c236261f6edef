//! The cert-manager controller, one pass at a time: for every `Certificate` of a
//! [`Snapshot`], decide whether it must be (re)issued, issue it with its `Issuer` or
//! `ClusterIssuer`, write the Secret folder, and keep a status like `CertificateStatus`.
//!
//! State layout (under the state folder):
//! - `secrets/<namespace>/<secretName>/` — `tls.crt`, `tls.key`, `ca.crt` ([`SecretDir`]);
//! - `certificates/<namespace>/<name>.json` — the status: revision, times, failures, and the
//!   issuer that signed (cert-manager keeps that in Secret annotations).
//!
//! What does not live here: scheduling (the caller runs a pass when it wants, e.g. at each
//! renewal time), YAML, and the renewal formula itself (`trustmesh_core::renewal`).

use std::collections::BTreeSet;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use trustmesh_core::model::certmanager::{
    Certificate, IssuerSpec, KeyAlgorithm as SpecKeyAlgorithm, KeyEncoding as SpecKeyEncoding,
    RotationPolicy,
};
use trustmesh_core::renewal::cert_manager_renewal_time;
use trustmesh_core::snapshot::Snapshot;

use crate::ca::Ca;
use crate::certmanager::{
    self, CertManagerError, CertRequest, CertUsage, DEFAULT_DURATION, IssuerRef, KeySpec,
    PrivateKeyAlgorithm, SecretContents, SecretDir,
};
use crate::fsutil;
use crate::keys::{KeyEncoding, KeyPair};
use crate::svid::{CertInfo, format_rfc3339};

/// "Certificate is up to date and has not expired" — cert-manager's Ready message.
pub const READY_MESSAGE: &str = "Certificate is up to date and has not expired";

/// Which certificates a pass must re-issue even if they are up to date (`cmctl renew`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Force {
    /// None: issue only what is missing, mismatched or due.
    #[default]
    None,
    /// Every certificate (`--all`).
    All,
    /// These `(namespace, name)` pairs.
    Some(BTreeSet<(String, String)>),
}

impl Force {
    fn applies(&self, ns: &str, name: &str) -> bool {
        match self {
            Force::None => false,
            Force::All => true,
            Force::Some(set) => set.contains(&(ns.to_owned(), name.to_owned())),
        }
    }
}

/// What a pass did with one certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// Namespace of the Certificate.
    pub namespace: String,
    /// Name of the Certificate.
    pub name: String,
    /// What happened.
    pub action: Action,
    /// cert-manager's reason (`DoesNotExist`, `Renewing`, `ManuallyTriggered`, `Ready`, ...).
    pub reason: String,
    /// One line for people.
    pub message: String,
}

/// The kind of [`Outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// A new certificate was written.
    Issued,
    /// Nothing to do.
    UpToDate,
    /// Issuance failed or could not start (issuer missing or not ready).
    Failed,
    /// Issuance was due but is held back by the failure backoff.
    BackingOff,
}

/// The persisted status of one Certificate, shaped like cert-manager's `CertificateStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredStatus {
    /// Issuances so far.
    pub revision: u64,
    /// Issuer kind/name/group that signed the current certificate.
    #[serde(default)]
    pub issuer_kind: String,
    /// See `issuer_kind`.
    #[serde(default)]
    pub issuer_name: String,
    /// See `issuer_kind`.
    #[serde(default)]
    pub issuer_group: String,
    /// Unix seconds of the last failed issuance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<u64>,
    /// Failures since the last success.
    #[serde(default)]
    pub failed_issuance_attempts: u32,
    /// The last failure's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_message: Option<String>,
}

/// One Certificate as `trustmesh certs` shows it (`kubectl get certificates -o wide`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `True`, `False` or `Unknown` (the Ready condition).
    pub ready: String,
    /// Ready condition reason.
    pub reason: String,
    /// Ready condition message.
    pub message: String,
    /// `spec.secretName`.
    pub secret_name: String,
    /// `Kind/name` of the issuer.
    pub issuer: String,
    /// The SPIFFE ID among the URI SANs, or the first DNS name / common name.
    pub identity: String,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// RFC 3339, by cert-manager's formula.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
    /// Unix seconds of `not_before` (`certmanager_certificate_not_before_timestamp_seconds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before_timestamp: Option<u64>,
    /// Unix seconds of `not_after` (`certmanager_certificate_expiration_timestamp_seconds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_timestamp: Option<u64>,
    /// Unix seconds of `renewal_time`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewal_timestamp: Option<u64>,
    /// Issuances so far.
    pub revision: u64,
    /// Serial of the current certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Issuer kind as written in `issuerRef` (metric label `issuer_kind`).
    pub issuer_kind: String,
    /// Issuer name (metric label `issuer_name`).
    pub issuer_name: String,
    /// Issuer group as written (metric label `issuer_group`).
    pub issuer_group: String,
}

/// Where a Certificate's files live.
#[derive(Debug, Clone)]
pub struct Layout {
    state: PathBuf,
}

impl Layout {
    /// A layout over `state`.
    pub fn new(state: impl Into<PathBuf>) -> Self {
        Self {
            state: state.into(),
        }
    }

    /// `secrets/<ns>/<secret>`.
    pub fn secret_dir(&self, namespace: &str, secret: &str) -> PathBuf {
        self.state.join("secrets").join(namespace).join(secret)
    }

    /// `certificates/<ns>/<name>.json`.
    pub fn status_file(&self, namespace: &str, name: &str) -> PathBuf {
        self.state
            .join("certificates")
            .join(namespace)
            .join(format!("{name}.json"))
    }

    fn read_status(&self, namespace: &str, name: &str) -> StoredStatus {
        // A missing or unreadable status is a fresh one: the Secret itself is the truth about
        // the certificate; the status only carries history.
        fs::read(self.status_file(namespace, name))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_status(
        &self,
        namespace: &str,
        name: &str,
        status: &StoredStatus,
    ) -> Result<(), CertManagerError> {
        let path = self.status_file(namespace, name);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|source| CertManagerError::Read {
                path: dir.to_owned(),
                source,
            })?;
        }
        let bytes = serde_json::to_vec_pretty(status).unwrap_or_default();
        fsutil::write_atomic(&path, &bytes, 0o644)?;
        Ok(())
    }
}

/// The issuer a Certificate refers to, resolved.
enum ResolvedIssuer {
    SelfSigned,
    Ca(Box<Ca>),
}

/// Why an issuer cannot sign right now.
struct NotReady {
    reason: &'static str,
    message: String,
    /// The CA Secret is missing but a Certificate in this config produces it: try later in
    /// the same pass.
    waiting_for_secret: bool,
}

fn ts(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn certificate_key(c: &Certificate) -> (String, String) {
    (
        c.metadata.namespace_str().to_owned(),
        c.metadata.name.clone(),
    )
}

/// Resolves `issuerRef` as cert-manager does: an `Issuer` in the Certificate's namespace, or
/// a `ClusterIssuer`, whose CA Secret is read from the cluster resource namespace.
fn resolve_issuer(
    snapshot: &Snapshot,
    layout: &Layout,
    cert: &Certificate,
) -> Result<ResolvedIssuer, NotReady> {
    let r = &cert.spec.issuer_ref;
    let ns = cert.metadata.namespace_str();
    if r.group_or_default() != "cert-manager.io" {
        return Err(NotReady {
            reason: "IssuerNotFound",
            message: format!(
                "issuer group {:?} is not served by trustmesh (only cert-manager.io)",
                r.group_or_default()
            ),
            waiting_for_secret: false,
        });
    }
    let (spec, secret_ns): (&IssuerSpec, String) = match r.kind_or_default() {
        "ClusterIssuer" => match snapshot
            .cluster_issuers()
            .iter()
            .find(|i| i.metadata.name == r.name)
        {
            Some(i) => (&i.spec, snapshot.mesh().cluster_resource_namespace.clone()),
            None => {
                return Err(NotReady {
                    reason: "IssuerNotFound",
                    message: format!("ClusterIssuer {:?} not found", r.name),
                    waiting_for_secret: false,
                });
            }
        },
        _ => match snapshot
            .issuers()
            .iter()
            .find(|i| i.metadata.name == r.name && i.metadata.namespace_str() == ns)
        {
            Some(i) => (&i.spec, ns.to_owned()),
            None => {
                return Err(NotReady {
                    reason: "IssuerNotFound",
                    message: format!("Issuer {ns}/{} not found", r.name),
                    waiting_for_secret: false,
                });
            }
        },
    };
    if spec.self_signed.is_some() {
        return Ok(ResolvedIssuer::SelfSigned);
    }
    let Some(ca) = &spec.ca else {
        return Err(NotReady {
            reason: "IssuerNotReady",
            message: "issuer type is not supported by trustmesh (SelfSigned and CA are)".into(),
            waiting_for_secret: false,
        });
    };
    let dir = layout.secret_dir(&secret_ns, &ca.secret_name);
    let produced_here = snapshot
        .certificates()
        .iter()
        .any(|c| c.metadata.namespace_str() == secret_ns && c.spec.secret_name == ca.secret_name);
    // cert-manager `pkg/issuer/ca/setup.go`: Ready=False "ErrGetKeyPair" when the Secret
    // cannot be read, "ErrInvalidKeyPair" when it holds no usable CA key pair.
    let contents = SecretDir::read(&dir).map_err(|e| NotReady {
        reason: "ErrGetKeyPair",
        message: format!(
            "CA secret {secret_ns}/{} not available: {e}",
            ca.secret_name
        ),
        waiting_for_secret: produced_here,
    })?;
    Ca::from_pem(&contents.tls_crt, &contents.tls_key)
        .map(|ca| ResolvedIssuer::Ca(Box::new(ca)))
        .map_err(|e| NotReady {
            reason: "ErrInvalidKeyPair",
            message: format!("CA secret {secret_ns}/{}: {e}", ca.secret_name),
            waiting_for_secret: false,
        })
}

/// The request a Certificate spec makes, with cert-manager's defaults.
pub fn request_for(cert: &Certificate) -> Result<CertRequest, CertManagerError> {
    let s = &cert.spec;
    let ip_addresses = s
        .ip_addresses
        .iter()
        .map(|ip| {
            ip.parse::<IpAddr>()
                .map_err(|_| CertManagerError::InvalidName {
                    field: "ipAddresses",
                    value: ip.clone(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let usages = s
        .usages
        .iter()
        .map(|u| {
            let text = serde_json::to_value(u)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            text.parse::<CertUsage>()
                .map_err(|_| CertManagerError::UnknownUsage(text))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pk = s.private_key.clone().unwrap_or_default();
    Ok(CertRequest {
        common_name: s.common_name.clone(),
        dns_names: s.dns_names.clone(),
        uris: s.uris.clone(),
        ip_addresses,
        email_addresses: s.email_addresses.clone(),
        organizations: s
            .subject
            .as_ref()
            .map(|x| x.organizations.clone())
            .unwrap_or_default(),
        duration: s
            .duration
            .map(|d| d.as_duration())
            .unwrap_or(DEFAULT_DURATION),
        is_ca: s.is_ca,
        usages,
        key: KeySpec {
            algorithm: match pk.algorithm {
                None | Some(SpecKeyAlgorithm::Rsa) => PrivateKeyAlgorithm::Rsa,
                Some(SpecKeyAlgorithm::Ecdsa) => PrivateKeyAlgorithm::Ecdsa,
                Some(SpecKeyAlgorithm::Ed25519) => PrivateKeyAlgorithm::Ed25519,
            },
            size: pk.size,
        },
        key_encoding: match pk.encoding {
            None | Some(SpecKeyEncoding::Pkcs1) => KeyEncoding::Pkcs1,
            Some(SpecKeyEncoding::Pkcs8) => KeyEncoding::Pkcs8,
        },
    })
}

/// Why the current Secret no longer satisfies the spec, if it does not
/// (cert-manager's re-issuance trigger chain, `policies.go`), in cert-manager's reasons.
fn mismatch(
    req: &CertRequest,
    cert: &Certificate,
    status: &StoredStatus,
    secret: &SecretContents,
) -> Option<(&'static str, String)> {
    let leaf = &secret.leaf;
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v.dedup();
        v
    };
    let r = &cert.spec.issuer_ref;
    if status.revision > 0
        && (status.issuer_name != r.name
            || status.issuer_kind != r.kind_or_default()
            || status.issuer_group != r.group_or_default())
    {
        return Some((
            "IncorrectIssuer",
            format!(
                "Issuing certificate as Secret was previously issued by {}/{}",
                status.issuer_kind, status.issuer_name
            ),
        ));
    }
    let want_ips: Vec<String> = sorted(
        &req.ip_addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
    );
    let have_ips: Vec<String> = sorted(
        &leaf
            .ip_sans
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
    );
    let fields = [
        ("uris", sorted(&req.uris), sorted(&leaf.uri_sans)),
        ("dnsNames", sorted(&req.dns_names), sorted(&leaf.dns_sans)),
        ("ipAddresses", want_ips, have_ips),
        (
            "emailAddresses",
            sorted(&req.email_addresses),
            sorted(&leaf.email_sans),
        ),
    ];
    for (field, want, have) in fields {
        if want != have {
            return Some((
                "SecretMismatch",
                format!("Existing issued Secret is not up to date for spec: [spec.{field}]"),
            ));
        }
    }
    if req.is_ca != leaf.is_ca {
        return Some((
            "SecretMismatch",
            "Existing issued Secret is not up to date for spec: [spec.isCA]".into(),
        ));
    }
    let lifetime = leaf
        .not_after
        .duration_since(leaf.not_before)
        .unwrap_or(Duration::ZERO);
    if lifetime.abs_diff(req.duration) > Duration::from_secs(1) {
        return Some((
            "SecretMismatch",
            "Existing issued Secret is not up to date for spec: [spec.duration]".into(),
        ));
    }
    None
}

/// Runs one pass over every Certificate of `snapshot`. Certificates whose CA issuer waits for
/// a Secret that another Certificate of the pass produces are retried after it, so a
/// SelfSigned → root CA → CA issuer → leaf chain settles in one pass.
pub fn reconcile(
    snapshot: &Snapshot,
    state: &Path,
    now: SystemTime,
    force: &Force,
) -> Vec<Outcome> {
    let layout = Layout::new(state);
    let mut pending: Vec<&Certificate> =
        snapshot.certificates().iter().map(|c| &c.object).collect();
    let mut outcomes: Vec<Outcome> = Vec::new();
    loop {
        let mut deferred = Vec::new();
        let before = pending.len();
        for cert in pending {
            match reconcile_one(snapshot, &layout, cert, now, force) {
                Step::Done(o) => outcomes.push(o),
                Step::Deferred(o) => deferred.push((cert, o)),
            }
        }
        if deferred.is_empty() || deferred.len() == before {
            // No progress: what is still waiting fails with its issuer's reason.
            outcomes.extend(deferred.into_iter().map(|(_, o)| o));
            break;
        }
        pending = deferred.into_iter().map(|(c, _)| c).collect();
    }
    outcomes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    outcomes
}

enum Step {
    Done(Outcome),
    Deferred(Outcome),
}

fn reconcile_one(
    snapshot: &Snapshot,
    layout: &Layout,
    cert: &Certificate,
    now: SystemTime,
    force: &Force,
) -> Step {
    let (ns, name) = certificate_key(cert);
    let outcome = |action, reason: &str, message: String| Outcome {
        namespace: ns.clone(),
        name: name.clone(),
        action,
        reason: reason.to_owned(),
        message,
    };
    let mut status = layout.read_status(&ns, &name);
    let req = match request_for(cert) {
        Ok(r) => r,
        Err(e) => return Step::Done(outcome(Action::Failed, "InvalidSpec", e.to_string())),
    };
    let dir = layout.secret_dir(&ns, &cert.spec.secret_name);
    let existing = SecretDir::read(&dir);
    // The trigger chain, first match wins (cert-manager `policies.go`).
    let trigger: Option<(&str, String)> = match &existing {
        Err(CertManagerError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Some((
                "DoesNotExist",
                "Issuing certificate as Secret does not exist".into(),
            ))
        }
        Err(e) => Some((
            "InvalidKeyPair",
            format!("Issuing certificate as Secret is invalid: {e}"),
        )),
        Ok(secret) => {
            if force.applies(&ns, &name) {
                Some((
                    "ManuallyTriggered",
                    "Certificate re-issuance manually triggered".into(),
                ))
            } else if let Some(m) = mismatch(&req, cert, &status, secret) {
                Some(m)
            } else {
                let leaf = &secret.leaf;
                let renewal = renewal_time(cert, leaf);
                if now >= leaf.not_after {
                    Some(("Expired", "Certificate expired, issuing a new one".into()))
                } else if now >= renewal {
                    Some((
                        "Renewing",
                        "Renewing certificate as renewal was scheduled at ".to_owned()
                            + &format_rfc3339(renewal),
                    ))
                } else {
                    None
                }
            }
        }
    };
    let Some((reason, why)) = trigger else {
        return Step::Done(outcome(Action::UpToDate, "Ready", READY_MESSAGE.into()));
    };
    // cert-manager backs off after failures: "1h * 2^(failedIssuanceAttempts-1)". A manual
    // trigger bypasses it, as `cmctl renew` does.
    if status.failed_issuance_attempts > 0 && reason != "ManuallyTriggered" {
        let exp = status.failed_issuance_attempts.saturating_sub(1).min(16);
        let wait = Duration::from_secs(3600u64 << exp);
        let retry_at =
            UNIX_EPOCH + Duration::from_secs(status.last_failure_time.unwrap_or(0)) + wait;
        if now < retry_at {
            return Step::Done(outcome(
                Action::BackingOff,
                "Backoff",
                format!(
                    "{why}; last issuance failed, retrying after {}",
                    format_rfc3339(retry_at)
                ),
            ));
        }
    }
    let issuer = match resolve_issuer(snapshot, layout, cert) {
        Ok(i) => i,
        Err(nr) => {
            let o = outcome(Action::Failed, nr.reason, nr.message);
            return if nr.waiting_for_secret {
                Step::Deferred(o)
            } else {
                Step::Done(o)
            };
        }
    };
    // `rotationPolicy: Never` keeps the existing key; `Always` (the default) makes a new one.
    let keep_key = cert
        .spec
        .private_key
        .as_ref()
        .and_then(|p| p.rotation_policy)
        == Some(RotationPolicy::Never);
    let old_key = match (&existing, keep_key) {
        (Ok(secret), true) => KeyPair::from_pem(&secret.tls_key).ok(),
        _ => None,
    };
    let issued = match &issuer {
        ResolvedIssuer::SelfSigned => {
            certmanager::issue(&req, IssuerRef::SelfSigned, old_key.as_ref(), now)
        }
        ResolvedIssuer::Ca(ca) => {
            certmanager::issue(&req, IssuerRef::Ca(ca), old_key.as_ref(), now)
        }
    }
    .and_then(|issued| SecretDir::write(&dir, &issued).map(|()| issued));
    let r = &cert.spec.issuer_ref;
    match issued {
        Ok(_) => {
            status.revision += 1;
            status.issuer_kind = r.kind_or_default().to_owned();
            status.issuer_name = r.name.clone();
            status.issuer_group = r.group_or_default().to_owned();
            status.failed_issuance_attempts = 0;
            status.last_failure_time = None;
            status.last_failure_message = None;
            match layout.write_status(&ns, &name, &status) {
                Ok(()) => Step::Done(outcome(Action::Issued, reason, why)),
                Err(e) => Step::Done(outcome(Action::Failed, "StatusWrite", e.to_string())),
            }
        }
        Err(e) => {
            status.failed_issuance_attempts += 1;
            status.last_failure_time = Some(ts(now));
            status.last_failure_message = Some(e.to_string());
            let _ = layout.write_status(&ns, &name, &status);
            Step::Done(outcome(Action::Failed, "Failed", e.to_string()))
        }
    }
}

/// The state of every Certificate of `snapshot`, as `kubectl get certificates -o wide` would
/// show it: Ready when the Secret holds a key pair that matches the spec and has not expired.
pub fn status(snapshot: &Snapshot, state: &Path, now: SystemTime) -> Vec<CertificateView> {
    let layout = Layout::new(state);
    snapshot
        .certificates()
        .iter()
        .map(|c| view(&layout, c, now))
        .collect()
}

/// When `leaf`, issued for `cert`, is due for renewal: the issuing trigger and the status
/// view use the same time.
fn renewal_time(cert: &Certificate, leaf: &CertInfo) -> SystemTime {
    cert_manager_renewal_time(
        leaf.not_before,
        leaf.not_after,
        cert.spec.renew_before.map(|d| d.as_duration()),
        cert.spec.renew_before_percentage,
    )
}

fn view(layout: &Layout, cert: &Certificate, now: SystemTime) -> CertificateView {
    let (ns, name) = certificate_key(cert);
    let stored = layout.read_status(&ns, &name);
    let r = &cert.spec.issuer_ref;
    let mut v = CertificateView {
        namespace: ns.clone(),
        name: name.clone(),
        ready: "False".into(),
        reason: "DoesNotExist".into(),
        message: "Issuing certificate as Secret does not exist".into(),
        secret_name: cert.spec.secret_name.clone(),
        issuer: format!("{}/{}", r.kind_or_default(), r.name),
        identity: cert
            .spec
            .uris
            .iter()
            .find(|u| u.starts_with("spiffe://"))
            .or(cert.spec.uris.first())
            .or(cert.spec.dns_names.first())
            .or(cert.spec.common_name.as_ref())
            .cloned()
            .unwrap_or_default(),
        not_before: None,
        not_after: None,
        renewal_time: None,
        not_before_timestamp: None,
        expiration_timestamp: None,
        renewal_timestamp: None,
        revision: stored.revision,
        serial: None,
        issuer_kind: r.kind.clone().unwrap_or_default(),
        issuer_name: r.name.clone(),
        issuer_group: r.group.clone().unwrap_or_default(),
    };
    let secret = match SecretDir::read(&layout.secret_dir(&ns, &cert.spec.secret_name)) {
        Ok(s) => s,
        Err(CertManagerError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            if let Some(msg) = stored.last_failure_message {
                v.reason = "Failed".into();
                v.message = msg;
            }
            return v;
        }
        Err(e) => {
            v.reason = "InvalidKeyPair".into();
            v.message = e.to_string();
            return v;
        }
    };
    let leaf = &secret.leaf;
    let renewal = renewal_time(cert, leaf);
    v.not_before = Some(format_rfc3339(leaf.not_before));
    v.not_after = Some(format_rfc3339(leaf.not_after));
    v.renewal_time = Some(format_rfc3339(renewal));
    v.not_before_timestamp = Some(ts(leaf.not_before));
    v.expiration_timestamp = Some(ts(leaf.not_after));
    v.renewal_timestamp = Some(ts(renewal));
    v.serial = Some(leaf.serial_hex.clone());
    let mism = request_for(cert)
        .ok()
        .and_then(|req| mismatch(&req, cert, &stored, &secret));
    if now >= leaf.not_after {
        v.reason = "Expired".into();
        v.message = format!("Certificate expired on {}", format_rfc3339(leaf.not_after));
    } else if let Some((reason, message)) = mism {
        v.reason = reason.into();
        v.message = message;
    } else {
        v.ready = "True".into();
        v.reason = "Ready".into();
        v.message = READY_MESSAGE.into();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const H: u64 = 3600;

    fn snapshot() -> Snapshot {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/teei");
        trustmesh_config::load_dir(dir).unwrap().snapshot
    }

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn find<'a>(outcomes: &'a [Outcome], name: &str) -> &'a Outcome {
        outcomes.iter().find(|o| o.name == name).unwrap()
    }

    /// cert-manager: "now ≥ renewalTime" re-issues (reason `Renewing`); before it, nothing
    /// happens. The example's leaves are 24h with `renewBefore: 12h`.
    #[test]
    fn renews_at_the_renewal_time_and_not_before() {
        let snap = snapshot();
        let state = tempfile::tempdir().unwrap();
        let first = reconcile(&snap, state.path(), t0(), &Force::None);
        assert!(
            first.iter().all(|o| o.action == Action::Issued),
            "{first:#?}"
        );
        let serial = |name: &str| {
            status(&snap, state.path(), t0())
                .into_iter()
                .find(|v| v.name == name)
                .unwrap()
                .serial
                .unwrap()
        };
        let before = serial("orders");

        let almost = t0() + Duration::from_secs(12 * H - 1);
        let o = reconcile(&snap, state.path(), almost, &Force::None);
        assert_eq!(find(&o, "orders").action, Action::UpToDate);

        let due = t0() + Duration::from_secs(12 * H);
        let o = reconcile(&snap, state.path(), due, &Force::None);
        let orders = find(&o, "orders");
        assert_eq!(
            (orders.action, orders.reason.as_str()),
            (Action::Issued, "Renewing")
        );
        assert_ne!(serial("orders"), before);
        // The 10-year root is not due.
        assert_eq!(find(&o, "teei-root-ca").action, Action::UpToDate);
    }

    /// `cmctl renew`: "Certificate re-issuance manually triggered", for the named ones only.
    #[test]
    fn manual_trigger_reissues_only_what_it_names() {
        let snap = snapshot();
        let state = tempfile::tempdir().unwrap();
        reconcile(&snap, state.path(), t0(), &Force::None);
        let force = Force::Some(BTreeSet::from([(
            "production".to_owned(),
            "payments".to_owned(),
        )]));
        let o = reconcile(&snap, state.path(), t0(), &force);
        let p = find(&o, "payments");
        assert_eq!(
            (p.action, p.reason.as_str()),
            (Action::Issued, "ManuallyTriggered")
        );
        assert_eq!(find(&o, "orders").action, Action::UpToDate);
        let views = status(&snap, state.path(), t0());
        let v = views.iter().find(|v| v.name == "payments").unwrap();
        assert_eq!((v.ready.as_str(), v.revision), ("True", 2));
    }

    /// The trigger chain: an expired certificate is re-issued and shown not ready until then.
    #[test]
    fn expired_certificates_are_not_ready_and_get_reissued() {
        let snap = snapshot();
        let state = tempfile::tempdir().unwrap();
        reconcile(&snap, state.path(), t0(), &Force::None);
        let later = t0() + Duration::from_secs(25 * H);
        let v = status(&snap, state.path(), later);
        let gw = v.iter().find(|v| v.name == "api-gateway").unwrap();
        assert_eq!(
            (gw.ready.as_str(), gw.reason.as_str()),
            ("False", "Expired")
        );
        let o = reconcile(&snap, state.path(), later, &Force::None);
        assert_eq!(find(&o, "api-gateway").reason, "Expired");
        let v = status(&snap, state.path(), later);
        assert!(v.iter().all(|v| v.ready == "True"), "{v:#?}");
    }

    /// A Secret whose SANs no longer match the spec is re-issued (`SecretMismatch`), and
    /// a CA issuer whose Secret is missing fails with `ErrGetKeyPair` without touching the
    /// Secrets it already issued.
    #[test]
    fn mismatched_secrets_are_reissued_and_missing_issuers_fail_cleanly() {
        let snap = snapshot();
        let state = tempfile::tempdir().unwrap();
        reconcile(&snap, state.path(), t0(), &Force::None);
        // Put payments' certificate into orders' Secret: wrong URI SAN for orders.
        let layout = Layout::new(state.path());
        let payments = SecretDir::read(&layout.secret_dir("production", "payments-tls")).unwrap();
        let issued = certmanager::IssuedCert {
            tls_crt: payments.tls_crt.clone(),
            tls_key: payments.tls_key.clone(),
            ca_crt: payments.ca_crt.clone().unwrap(),
            not_before: payments.leaf.not_before,
            not_after: payments.leaf.not_after,
            serial: payments.leaf.serial_hex.clone(),
        };
        SecretDir::write(&layout.secret_dir("production", "orders-tls"), &issued).unwrap();
        let v = status(&snap, state.path(), t0());
        let orders = v.iter().find(|v| v.name == "orders").unwrap();
        assert_eq!(
            (orders.ready.as_str(), orders.reason.as_str()),
            ("False", "SecretMismatch")
        );
        let o = reconcile(&snap, state.path(), t0(), &Force::None);
        assert_eq!(find(&o, "orders").reason, "SecretMismatch");
        assert_eq!(find(&o, "orders").action, Action::Issued);

        // Lose the root CA Secret and force a leaf: the leaf fails, naming the Secret.
        std::fs::remove_dir_all(layout.secret_dir("cert-manager", "teei-root-ca")).unwrap();
        // Keep the issuer but drop the Certificate that would recreate the root.
        let (_dir, snap_without_root) = modified(|name, text| {
            if name == "cert-manager.yaml" {
                let docs: Vec<&str> = text
                    .split("\n---")
                    .filter(|doc| !doc.contains("kind: Certificate\n"))
                    .collect();
                docs.join("\n---")
            } else {
                text
            }
        });
        let force = Force::Some(BTreeSet::from([(
            "production".to_owned(),
            "orders".to_owned(),
        )]));
        let before = SecretDir::read(&layout.secret_dir("production", "orders-tls")).unwrap();
        let o = reconcile(&snap_without_root, state.path(), t0(), &force);
        let orders = find(&o, "orders");
        assert_eq!(orders.action, Action::Failed, "{o:#?}");
        assert_eq!(orders.reason, "ErrGetKeyPair");
        assert!(
            orders.message.contains("teei-root-ca"),
            "{}",
            orders.message
        );
        let after = SecretDir::read(&layout.secret_dir("production", "orders-tls")).unwrap();
        assert_eq!(
            before.leaf.serial_hex, after.leaf.serial_hex,
            "the valid Secret stays"
        );
    }

    /// A copy of the example with `edit` applied to each file's text.
    fn modified(edit: impl Fn(&str, String) -> String) -> (tempfile::TempDir, Snapshot) {
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/teei");
        for entry in std::fs::read_dir(&src).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(entry.path()).unwrap();
            std::fs::write(dir.path().join(&name), edit(&name, text)).unwrap();
        }
        let snap = trustmesh_config::load_dir(dir.path()).unwrap().snapshot;
        (dir, snap)
    }

    /// `rotationPolicy: Never` keeps the private key across re-issuance; `Always` makes a
    /// new one.
    #[test]
    fn rotation_policy_decides_whether_the_key_changes() {
        for (policy, same_key) in [("Always", false), ("Never", true)] {
            let (_dir, snap) = modified(|name, text| {
                if name == "certificates.yaml" {
                    text.replace(
                        "rotationPolicy: Always",
                        &format!("rotationPolicy: {policy}"),
                    )
                } else {
                    text
                }
            });
            let state = tempfile::tempdir().unwrap();
            reconcile(&snap, state.path(), t0(), &Force::None);
            let layout = Layout::new(state.path());
            let read = || SecretDir::read(&layout.secret_dir("production", "orders-tls")).unwrap();
            let before = read();
            reconcile(&snap, state.path(), t0(), &Force::All);
            let after = read();
            assert_ne!(
                before.leaf.serial_hex, after.leaf.serial_hex,
                "{policy}: re-issued"
            );
            assert_eq!(before.tls_key == after.tls_key, same_key, "{policy}");
        }
    }
}
