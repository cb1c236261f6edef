//! Admission rules for cert-manager `Certificate`, `Issuer` and `ClusterIssuer` (digest §5.1,
//! §5.2, §5.5; cert-manager `internal/apis/certmanager/validation/{certificate,issuer}.go`),
//! plus trustmesh's: only SelfSigned and CA issuers, and `spiffe://` URIs must be valid
//! SPIFFE IDs. References between them (issuer exists, CA secret produced) are in
//! `validate_cross.rs`.

use std::net::IpAddr;

use super::{Ctx, no_empty_strings};
use crate::SpiffeId;
use crate::model::certmanager::{
    DEFAULT_CERTIFICATE_DURATION, IssuerSpec, KeyAlgorithm, MINIMUM_CERTIFICATE_DURATION,
    MINIMUM_RENEW_BEFORE,
};
use crate::model::{Certificate, Issuer};

pub(super) fn certificate(c: &Certificate, cx: &mut Ctx<'_>) {
    let s = &c.spec;
    // `if crt.SecretName == "" { field.Required(fldPath.Child("secretName"), "must be specified") }`
    if s.secret_name.is_empty() {
        cx.error("spec.secretName", "must be specified");
    } else if let Err(e) = super::dns1123_subdomain(&s.secret_name) {
        cx.error("spec.secretName", e);
    }
    // validateIssuerRef: "all issuerRefs must specify a name".
    if s.issuer_ref.name.is_empty() {
        cx.error("spec.issuerRef.name", "must be specified");
    }
    // "issuerRef {name, kind=Issuer, group=cert-manager.io}": for the cert-manager.io group the
    // kind "must be one of Issuer or ClusterIssuer".
    let group = s.issuer_ref.group_or_default();
    if group == "cert-manager.io" {
        let kind = s.issuer_ref.kind_or_default();
        if kind != "Issuer" && kind != "ClusterIssuer" {
            let hint = if s.issuer_ref.group.is_none() {
                " (did you forget to set spec.issuerRef.group?)"
            } else {
                ""
            };
            cx.error(
                "spec.issuerRef.kind",
                format!("must be one of Issuer or ClusterIssuer{hint}"),
            );
        }
    } else {
        cx.error(
            "spec.issuerRef.group",
            format!("external issuer group {group:?} is not supported by trustmesh: only cert-manager.io SelfSigned and CA issuers"),
        );
    }
    // "at least one of commonName (from the commonName field or from a literalSubject),
    // dnsNames, emailSANs, ipAddresses, otherNames, or uriSANs must be set".
    let cn = s.common_name.as_deref().unwrap_or("");
    if cn.is_empty()
        && s.literal_subject.as_deref().unwrap_or("").is_empty()
        && s.dns_names.is_empty()
        && s.uris.is_empty()
        && s.email_addresses.is_empty()
        && s.ip_addresses.is_empty()
        && s.other_names.is_none()
    {
        cx.error(
            "spec",
            "at least one of commonName (from the commonName field or from a literalSubject), dnsNames, emailSANs, ipAddresses, otherNames, or uriSANs must be set",
        );
    }
    // "if a common name has been specified, ensure it is no longer than 64 chars".
    if cn.len() > 64 {
        cx.error(
            "spec.commonName",
            format!("may not be more than 64 bytes (has {})", cn.len()),
        );
    }
    if s.literal_subject.is_some() {
        if !cn.is_empty() {
            cx.error(
                "spec.commonName",
                "When providing a `LiteralSubject` no `commonName` may be provided.",
            );
        }
        cx.error(
            "spec.literalSubject",
            "literalSubject is not supported by trustmesh (feature-gated in cert-manager)",
        );
    }
    for (name, set) in [
        ("otherNames", s.other_names.is_some()),
        ("keystores", s.keystores.is_some()),
        (
            "additionalOutputFormats",
            s.additional_output_formats.is_some(),
        ),
        ("nameConstraints", s.name_constraints.is_some()),
    ] {
        if set {
            cx.warn(
                format!("spec.{name}"),
                format!("{name} is not implemented by trustmesh and is ignored"),
            );
        }
    }
    no_empty_strings(&s.dns_names, "spec.dnsNames", cx);
    // validateIPAddresses: "invalid IP address".
    for (i, ip) in s.ip_addresses.iter().enumerate() {
        if ip.parse::<IpAddr>().is_err() {
            cx.error(
                format!("spec.ipAddresses[{i}]"),
                format!("invalid IP address {ip:?}"),
            );
        }
    }
    for (i, e) in s.email_addresses.iter().enumerate() {
        let valid = e.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && !d.is_empty() && !e.contains(' ') && !e.contains('<')
        });
        if !valid {
            cx.error(
                format!("spec.emailAddresses[{i}]"),
                format!("invalid email address {e:?}"),
            );
        }
    }
    // "`uris` is where a SPIFFE ID goes": trustmesh issues them, so they must be valid ones.
    for (i, u) in s.uris.iter().enumerate() {
        if u.starts_with("spiffe://") {
            if let Err(e) = SpiffeId::parse(u) {
                cx.error(
                    format!("spec.uris[{i}]"),
                    format!("invalid SPIFFE ID {u:?}: {e}"),
                );
            }
        } else if !u.contains(':') {
            cx.error(
                format!("spec.uris[{i}]"),
                format!("{u:?} is not a URI (no scheme)"),
            );
        }
    }
    private_key(c, cx);
    // cert-manager only runs ValidateDuration `if crt.Duration != nil || crt.RenewBefore != nil`.
    if s.duration.is_some() || s.renew_before.is_some() {
        durations(c, cx);
    }
    // "revisionHistoryLimit (≥1, default 1)": "must not be less than 1".
    if let Some(n) = s.revision_history_limit
        && n < 1
    {
        cx.error("spec.revisionHistoryLimit", "must not be less than 1");
    }
    if let Some(t) = &s.secret_template {
        // validateSecretTemplateAnnotations: "cert-manager.io/* annotations are not allowed".
        for a in t.annotations.keys() {
            if a.starts_with("cert-manager.io/") && a != "cert-manager.io/allow-direct-injection" {
                cx.error(
                    "spec.secretTemplate.annotations",
                    format!("{a}: cert-manager.io/* annotations are not allowed"),
                );
            }
        }
    }
}

fn private_key(c: &Certificate, cx: &mut Ctx<'_>) {
    let Some(pk) = &c.spec.private_key else {
        return;
    };
    // "RSA 2048/4096/8192, default 2048; ECDSA 256/384/521, default 256": cert-manager checks
    // "must be between 2048 and 8192 for rsa keyAlgorithm" and ECDSA ∈ {256, 384, 521}.
    match (pk.algorithm, pk.size) {
        (None | Some(KeyAlgorithm::Rsa), Some(size))
            if size > 0 && !(2048..=8192).contains(&size) =>
        {
            cx.error(
                "spec.privateKey.size",
                "must be between 2048 and 8192 for rsa keyAlgorithm",
            );
        }
        (Some(KeyAlgorithm::Ecdsa), Some(size)) if size > 0 && ![256, 384, 521].contains(&size) => {
            cx.error(
                "spec.privateKey.size",
                format!("Unsupported value: {size}: supported values: \"256\", \"384\", \"521\""),
            );
        }
        _ => {}
    }
}

/// cert-manager `ValidateDuration`, including its percentage quirk.
fn durations(c: &Certificate, cx: &mut Ctx<'_>) {
    let s = &c.spec;
    // "`duration` | default 90d (`DefaultCertificateDuration = 2160h`), minimum 1h".
    let duration = s.duration.unwrap_or(DEFAULT_CERTIFICATE_DURATION);
    if duration < MINIMUM_CERTIFICATE_DURATION {
        cx.error(
            "spec.duration",
            format!("certificate duration must be greater than {MINIMUM_CERTIFICATE_DURATION}"),
        );
    }
    // "renewBefore XOR renewBeforePercentage".
    if s.renew_before.is_some() && s.renew_before_percentage.is_some() {
        let msg =
            "renewBefore and renewBeforePercentage are mutually exclusive and cannot both be set";
        cx.error("spec.renewBefore", msg);
        cx.error("spec.renewBeforePercentage", msg);
    }
    if let Some(rb) = s.renew_before {
        // "renewBefore ≥ 5m".
        if rb < MINIMUM_RENEW_BEFORE {
            cx.error(
                "spec.renewBefore",
                format!("certificate renewBefore must be greater than {MINIMUM_RENEW_BEFORE}"),
            );
        }
        // "and < duration".
        if rb >= duration {
            cx.error(
                "spec.renewBefore",
                format!("certificate duration {duration} must be greater than renewBefore {rb}"),
            );
        }
    }
    if let Some(pct) = s.renew_before_percentage {
        // "for percentage it checks `duration*(100-pct)/100` ≥ 5m and < duration (quirk: uses 100-pct)".
        // Go: `duration * time.Duration(100-pct) / 100` in int64 nanoseconds.
        let nanos = i128::try_from(duration.as_duration().as_nanos()).unwrap_or(i128::MAX);
        let rb = nanos * i128::from(100 - i64::from(pct)) / 100;
        if rb < i128::try_from(MINIMUM_RENEW_BEFORE.as_duration().as_nanos()).unwrap_or(0) {
            cx.error(
                "spec.renewBeforePercentage",
                format!("certificate renewBeforePercentage must result in a renewBefore greater than {MINIMUM_RENEW_BEFORE}"),
            );
        }
        if rb >= nanos {
            cx.error(
                "spec.renewBeforePercentage",
                "certificate renewBeforePercentage must result in a renewBefore less than duration",
            );
        }
    }
}

pub(super) fn issuer(i: &Issuer, cx: &mut Ctx<'_>) {
    let s: &IssuerSpec = &i.spec;
    let unsupported = [
        ("acme", s.acme.is_some()),
        ("vault", s.vault.is_some()),
        ("venafi", s.venafi.is_some()),
    ];
    for (name, set) in unsupported {
        if set {
            cx.error(
                format!("spec.{name}"),
                format!(
                    "issuer type {name} is not supported by trustmesh (only selfSigned and ca)"
                ),
            );
        }
    }
    let count = usize::from(s.self_signed.is_some())
        + usize::from(s.ca.is_some())
        + unsupported.iter().filter(|(_, set)| *set).count();
    // ValidateIssuerConfig: "at least one issuer must be configured" / "may not specify more
    // than one issuer type".
    if count == 0 {
        cx.error("spec", "at least one issuer must be configured");
    } else if count > 1 {
        cx.error("spec", "may not specify more than one issuer type");
    }
    if let Some(ss) = &s.self_signed {
        no_empty_strings(
            &ss.crl_distribution_points,
            "spec.selfSigned.crlDistributionPoints",
            cx,
        );
    }
    if let Some(ca) = &s.ca {
        // ValidateCAIssuerConfig: "secretName ... must be specified".
        if ca.secret_name.is_empty() {
            cx.error("spec.ca.secretName", "must be specified");
        }
        no_empty_strings(
            &ca.crl_distribution_points,
            "spec.ca.crlDistributionPoints",
            cx,
        );
        no_empty_strings(&ca.ocsp_servers, "spec.ca.ocspServers", cx);
        no_empty_strings(
            &ca.issuing_certificate_urls,
            "spec.ca.issuingCertificateURLs",
            cx,
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::{Value, json};

    use super::super::tests::{assert_error, assert_valid, assert_warning, errors, res};
    use crate::model::{Kind, Resource};

    fn cert(extra: Value) -> Resource {
        let mut spec = json!({"secretName": "api-gateway-tls", "issuerRef": {"name": "teei-ca", "kind": "ClusterIssuer"},
            "uris": ["spiffe://us.cluster.local/ns/production/sa/api-gateway"]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                if v.is_null() {
                    s.remove(k);
                } else {
                    s.insert(k.clone(), v.clone());
                }
            }
        }
        res(
            Kind::Certificate,
            json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "c", "namespace": "production"}, "spec": spec}),
        )
    }

    fn issuer(spec: Value) -> Resource {
        res(
            Kind::ClusterIssuer,
            json!({"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer", "metadata": {"name": "i"}, "spec": spec}),
        )
    }

    #[test]
    fn a_mesh_certificate_is_valid() {
        assert_valid(&cert(
            json!({"duration": "24h", "renewBefore": "12h", "usages": ["server auth", "client auth", "digital signature"],
            "privateKey": {"algorithm": "ECDSA", "size": 256, "encoding": "PKCS8", "rotationPolicy": "Always"}, "revisionHistoryLimit": 1}),
        ));
    }

    #[test]
    fn duration_at_least_one_hour() {
        // "duration ≥ 1h".
        assert_error(
            &cert(json!({"duration": "30m"})),
            "spec.duration",
            "certificate duration must be greater than 1h0m0s",
        );
        assert_valid(&cert(json!({"duration": "1h"})));
    }

    #[test]
    fn renew_before_at_least_five_minutes_and_below_duration() {
        // "renewBefore ≥ 5m and < duration".
        assert_error(
            &cert(json!({"duration": "24h", "renewBefore": "1m"})),
            "spec.renewBefore",
            "must be greater than 5m0s",
        );
        assert_error(
            &cert(json!({"duration": "24h", "renewBefore": "24h"})),
            "spec.renewBefore",
            "certificate duration 24h0m0s must be greater than renewBefore 24h0m0s",
        );
        // Without duration, the 90-day default applies.
        assert_valid(&cert(json!({"renewBefore": "720h"})));
        assert_error(
            &cert(json!({"renewBefore": "2160h"})),
            "spec.renewBefore",
            "duration 2160h0m0s must be greater",
        );
    }

    #[test]
    fn renew_before_xor_percentage() {
        // "renewBefore XOR renewBeforePercentage".
        let r = cert(json!({"duration": "24h", "renewBefore": "12h", "renewBeforePercentage": 50}));
        assert_error(&r, "spec.renewBefore", "mutually exclusive");
        assert_error(&r, "spec.renewBeforePercentage", "mutually exclusive");
    }

    #[test]
    fn percentage_quirk_uses_100_minus_pct() {
        // "for percentage it checks `duration*(100-pct)/100` ≥ 5m and < duration (quirk: uses 100-pct)".
        // 1h with 95 %: 1h*(5)/100 = 3m < 5m → error, although 95 % of 1h is 57m.
        assert_error(
            &cert(json!({"duration": "1h", "renewBeforePercentage": 95})),
            "spec.renewBeforePercentage",
            "greater than 5m0s",
        );
        // 1h with 5 %: 1h*95/100 = 57m ≥ 5m → accepted, although 5 % of 1h is 3m.
        assert_valid(&cert(json!({"duration": "1h", "renewBeforePercentage": 5})));
        // pct 0 → renewBefore = duration → "less than duration".
        assert_error(
            &cert(json!({"duration": "24h", "renewBeforePercentage": 0})),
            "spec.renewBeforePercentage",
            "less than duration",
        );
        // The check only runs when duration or renewBefore is set (cert-manager's guard).
        assert_valid(&cert(json!({"renewBeforePercentage": 0})));
    }

    #[test]
    fn subject_or_san_required_and_common_name_length() {
        // "at least one of CN/literalSubject/dnsNames/uris required (CN ≤64)".
        assert_error(
            &cert(json!({"uris": null})),
            "spec",
            "at least one of commonName",
        );
        assert_valid(&cert(json!({"uris": null, "commonName": "teei-root-ca"})));
        assert_error(
            &cert(json!({"commonName": "x".repeat(65)})),
            "spec.commonName",
            "64 bytes",
        );
    }

    #[test]
    fn issuer_ref_rules() {
        // "issuerRef.kind Issuer|ClusterIssuer": "must be one of Issuer or ClusterIssuer".
        let r = cert(json!({"issuerRef": {"name": "x", "kind": "VenafiIssuer"}}));
        assert_error(
            &r,
            "spec.issuerRef.kind",
            "must be one of Issuer or ClusterIssuer (did you forget to set spec.issuerRef.group?)",
        );
        assert_error(
            &cert(json!({"issuerRef": {"kind": "Issuer"}})),
            "spec.issuerRef.name",
            "must be specified",
        );
        assert_error(
            &cert(json!({"issuerRef": {"name": "x", "group": "awspca.cert-manager.io"}})),
            "spec.issuerRef.group",
            "not supported by trustmesh",
        );
        assert_error(
            &cert(json!({"secretName": ""})),
            "spec.secretName",
            "must be specified",
        );
    }

    #[test]
    fn sans_must_parse() {
        let r = cert(
            json!({"uris": ["spiffe://US/ns/a/sa/b", "no-scheme"], "ipAddresses": ["127.0.0.1", "1.2.3"], "emailAddresses": ["Ops <ops@x>"]}),
        );
        assert_error(&r, "spec.uris[0]", "invalid SPIFFE ID");
        assert_error(&r, "spec.uris[1]", "not a URI");
        assert_error(&r, "spec.ipAddresses[1]", "invalid IP address");
        assert_error(&r, "spec.emailAddresses[0]", "invalid email");
        assert_eq!(errors(&r).len(), 4);
    }

    #[test]
    fn private_key_sizes() {
        // "RSA 2048..8192; ECDSA 256/384/521".
        assert_error(
            &cert(json!({"privateKey": {"size": 1024}})),
            "spec.privateKey.size",
            "between 2048 and 8192",
        );
        assert_error(
            &cert(json!({"privateKey": {"algorithm": "ECDSA", "size": 512}})),
            "spec.privateKey.size",
            "\"256\", \"384\", \"521\"",
        );
        assert_valid(&cert(json!({"privateKey": {"algorithm": "Ed25519"}})));
        let bad = crate::model::Resource::deserialize_as(
            Kind::Certificate,
            json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "spec": {"privateKey": {"algorithm": "DSA"}}}),
        );
        assert!(bad.is_err());
    }

    #[test]
    fn revision_history_limit_and_secret_template() {
        assert_error(
            &cert(json!({"revisionHistoryLimit": 0})),
            "spec.revisionHistoryLimit",
            "must not be less than 1",
        );
        let r =
            cert(json!({"secretTemplate": {"annotations": {"cert-manager.io/issuer-name": "x"}}}));
        assert_error(
            &r,
            "spec.secretTemplate.annotations",
            "cert-manager.io/* annotations are not allowed",
        );
        assert_warning(
            &cert(json!({"keystores": {"pkcs12": {"create": true}}})),
            "spec.keystores",
            "not implemented",
        );
    }

    #[test]
    fn issuer_types() {
        assert_valid(&issuer(json!({"selfSigned": {}})));
        assert_valid(&issuer(
            json!({"ca": {"secretName": "teei-root-ca", "crlDistributionPoints": ["http://crl"], "ocspServers": ["http://ocsp"], "issuingCertificateURLs": ["http://aia"]}}),
        ));
        // "other issuer types (acme, vault, venafi) → a validation error".
        assert_error(
            &issuer(json!({"acme": {"server": "https://acme"}})),
            "spec.acme",
            "issuer type acme is not supported by trustmesh",
        );
        assert_error(
            &issuer(json!({"vault": {}})),
            "spec.vault",
            "issuer type vault is not supported",
        );
        assert_error(
            &issuer(json!({})),
            "spec",
            "at least one issuer must be configured",
        );
        assert_error(
            &issuer(json!({"selfSigned": {}, "ca": {"secretName": "x"}})),
            "spec",
            "more than one issuer type",
        );
        assert_error(
            &issuer(json!({"ca": {}})),
            "spec.ca.secretName",
            "must be specified",
        );
    }
}
