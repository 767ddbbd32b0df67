//! The claim checks, sans I/O: every algorithm from both key sources, and each refusal
//! (expired, wrong audience, lifetime bound, forged, unknown key, algorithm mismatch, missing
//! claims, malformed headers) with its reason; the per-call permission checks; the cache
//! honouring expiry; and hostile header values (proptest: never a panic, never accepted).
//!
//! Hostile cases: `MERIDIAN_HOSTILE_CASES` (default 2,000); the benchmark-style run is
//! `MERIDIAN_HOSTILE_CASES=100000 cargo nextest run -p meridian-auth --test verify -E
//! 'test(hostile) or test(tampered)'` (results in `docs/security-testing.md`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use meridian_auth::keys::{generate_ed25519, key_id, pem_encode};
use meridian_auth::mint::{TokenGrant, TokenMinter};
use meridian_auth::{
    Audience, KeySource, LedgerClaims, Unauthenticated, Verifier, VerifierSettings,
};
use meridian_testkit::hostile::{hostile_cases_or, hostile_config_with};
use proptest::prelude::*;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

const NOW_S: u64 = 1_800_000_000;
const RSA_KEY: &str = include_str!("fixtures/rs256-test-only.key");
const RSA_PUBLIC_PEM: &str = include_str!("fixtures/rs256-test-only.pub.pem");
const RSA_JWKS: &str = include_str!("fixtures/rs256-test-only.jwks.json");
/// SubjectPublicKeyInfo prefix of a P-256 public key (uncompressed point follows).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

fn settings() -> VerifierSettings {
    VerifierSettings {
        audience: "participant1".into(),
        max_token_lifetime_s: 86_400,
        leeway_s: 5,
    }
}

fn grant() -> TokenGrant {
    TokenGrant {
        participant: "participant1".into(),
        user: "alice-app".into(),
        act_as: vec!["alice".into()],
        read_as: vec!["bank".into()],
        admin: false,
        lifetime_s: 3_600,
    }
}

/// A minter and the two key sources for its public key.
struct Keys {
    minter: TokenMinter,
    jwks: KeySource,
    pem: KeySource,
}

fn ed25519() -> Keys {
    let pair = generate_ed25519().expect("key pair");
    Keys {
        minter: TokenMinter::from_pem(&pair.private_pem).expect("ed25519 minter"),
        jwks: KeySource::Jwks(pair.jwks),
        pem: KeySource::Pem {
            pem: pair.public_pem.into_bytes(),
            algorithm: Algorithm::EdDSA,
        },
    }
}

fn es256() -> Keys {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("p256 key");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("p256 pair");
    let point = pair.public_key().as_ref();
    let minter =
        TokenMinter::from_pem(&pem_encode("PRIVATE KEY", pkcs8.as_ref())).expect("es256 minter");
    assert_eq!(minter.algorithm(), Algorithm::ES256);
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": key_id(point),
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    }]});
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(point);
    Keys {
        minter,
        jwks: KeySource::Jwks(jwks.to_string()),
        pem: KeySource::Pem {
            pem: pem_encode("PUBLIC KEY", &spki).into_bytes(),
            algorithm: Algorithm::ES256,
        },
    }
}

fn rs256() -> Keys {
    let minter = TokenMinter::from_pem(RSA_KEY)
        .expect("rsa minter")
        .with_key_id("rsa-test");
    assert_eq!(minter.algorithm(), Algorithm::RS256);
    Keys {
        minter,
        jwks: KeySource::Jwks(RSA_JWKS.into()),
        pem: KeySource::Pem {
            pem: RSA_PUBLIC_PEM.as_bytes().to_vec(),
            algorithm: Algorithm::RS256,
        },
    }
}

fn verifier(source: &KeySource) -> Verifier {
    Verifier::new(source, settings()).expect("verifier")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn refusal(verifier: &Verifier, token: &str, now_s: u64) -> Unauthenticated {
    let error = verifier
        .verify_header(Some(&bearer(token)), now_s)
        .expect_err("must be refused");
    assert!(
        !error.to_string().contains(token),
        "the message echoes the token: {error}"
    );
    error
}

#[test]
fn every_algorithm_verifies_from_a_jwks_and_from_a_pem() {
    for (name, keys) in [("EdDSA", ed25519()), ("ES256", es256()), ("RS256", rs256())] {
        let token = keys.minter.mint(&grant(), NOW_S).expect("mint");
        for source in [&keys.jwks, &keys.pem] {
            let authorized = verifier(source)
                .verify_header(Some(&bearer(&token)), NOW_S + 10)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(authorized.user, "alice-app");
            assert!(authorized.act_as.contains("alice"), "{name}");
            assert!(authorized.read_as.contains("bank"), "{name}");
            assert!(!authorized.admin);
            assert_eq!(authorized.expires_at_s, NOW_S + 3_600);
        }
    }
}

#[test]
fn an_expired_token_is_refused_beyond_the_leeway() {
    let keys = ed25519();
    let verifier = verifier(&keys.jwks);
    let token = keys.minter.mint(&grant(), NOW_S).expect("mint");
    let exp_s = NOW_S + 3_600;
    verifier
        .verify(&token, exp_s + 5)
        .expect("within the leeway");
    // Fresh verifier: no cache.
    let fresh = self::verifier(&keys.jwks);
    assert_eq!(
        refusal(&fresh, &token, exp_s + 6),
        Unauthenticated::Expired {
            exp_s,
            now_s: exp_s + 6
        }
    );
}

#[test]
fn a_cached_token_still_expires() {
    let keys = ed25519();
    let verifier = verifier(&keys.jwks);
    let token = keys.minter.mint(&grant(), NOW_S).expect("mint");
    verifier.verify(&token, NOW_S).expect("valid");
    verifier.verify(&token, NOW_S + 1).expect("valid, cached");
    assert!(matches!(
        refusal(&verifier, &token, NOW_S + 3_600 + 6),
        Unauthenticated::Expired { .. }
    ));
}

#[test]
fn a_token_for_another_participant_is_refused() {
    let keys = ed25519();
    let mut other = grant();
    other.participant = "participant2".into();
    let token = keys.minter.mint(&other, NOW_S).expect("mint");
    assert_eq!(
        refusal(&verifier(&keys.jwks), &token, NOW_S),
        Unauthenticated::WrongAudience {
            expected: "participant1".into()
        }
    );
    // A list naming this participant is accepted.
    let mut claims = grant().claims(NOW_S);
    claims.aud = Some(Audience::Many(vec!["x".into(), "participant1".into()]));
    let token = keys.minter.sign(&claims).expect("sign");
    verifier(&keys.jwks).verify(&token, NOW_S).expect("listed");
}

#[test]
fn a_token_living_longer_than_the_bound_is_refused() {
    let keys = ed25519();
    let verifier = verifier(&keys.jwks);
    let mut long = grant();
    long.lifetime_s = 86_401;
    let token = keys.minter.mint(&long, NOW_S).expect("mint");
    assert_eq!(
        refusal(&verifier, &token, NOW_S),
        Unauthenticated::LifetimeTooLong {
            lifetime_s: 86_401,
            max_s: 86_400
        }
    );
    // Without iat, the remaining lifetime counts.
    let mut claims = grant().claims(NOW_S);
    claims.iat = None;
    claims.exp = Some(NOW_S + 100_000);
    let token = keys.minter.sign(&claims).expect("sign");
    assert!(matches!(
        refusal(&verifier, &token, NOW_S),
        Unauthenticated::LifetimeTooLong { .. }
    ));
    claims.exp = Some(NOW_S + 80_000);
    let token = keys.minter.sign(&claims).expect("sign");
    verifier.verify(&token, NOW_S).expect("within the bound");
}

#[test]
fn a_token_signed_by_another_key_is_refused() {
    let keys = ed25519();
    let forger = ed25519()
        .minter
        .with_key_id(keys.minter.key_id().to_owned());
    let token = forger.mint(&grant(), NOW_S).expect("mint");
    for source in [&keys.jwks, &keys.pem] {
        assert_eq!(
            refusal(&verifier(source), &token, NOW_S),
            Unauthenticated::BadSignature
        );
    }
    // Same for the other algorithms, and a tampered payload.
    let rsa = rs256();
    let forged_rsa = es256().minter.mint(&grant(), NOW_S).expect("mint");
    assert!(matches!(
        refusal(&verifier(&rsa.pem), &forged_rsa, NOW_S),
        Unauthenticated::AlgorithmMismatch { .. }
    ));
    let genuine = keys.minter.mint(&grant(), NOW_S).expect("mint");
    let mut admin = grant().claims(NOW_S);
    admin.admin = true;
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&admin).expect("json"));
    let parts: Vec<&str> = genuine.split('.').collect();
    let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
    assert_eq!(
        refusal(&verifier(&keys.jwks), &tampered, NOW_S),
        Unauthenticated::BadSignature
    );
}

#[test]
fn an_unknown_key_id_or_algorithm_is_refused() {
    let keys = ed25519();
    let stranger = ed25519().minter.mint(&grant(), NOW_S).expect("mint");
    assert!(matches!(
        refusal(&verifier(&keys.jwks), &stranger, NOW_S),
        Unauthenticated::UnknownKey(_)
    ));
    // An ES256 token naming the EdDSA key's id.
    let es = es256().minter.with_key_id(keys.minter.key_id().to_owned());
    let token = es.mint(&grant(), NOW_S).expect("mint");
    assert_eq!(
        refusal(&verifier(&keys.jwks), &token, NOW_S),
        Unauthenticated::AlgorithmMismatch {
            token: "ES256".into(),
            key: "EdDSA".into()
        }
    );
}

#[test]
fn missing_claims_are_named() {
    let keys = ed25519();
    let verifier = verifier(&keys.jwks);
    type Strip = fn(&mut LedgerClaims);
    let cases: [(&str, Strip); 4] = [
        ("exp", |c| c.exp = None),
        ("sub", |c| c.sub = None),
        ("sub", |c| c.sub = Some(String::new())),
        ("aud", |c| c.aud = None),
    ];
    for (claim, strip) in cases {
        let mut claims = grant().claims(NOW_S);
        strip(&mut claims);
        let token = keys.minter.sign(&claims).expect("sign");
        let error = refusal(&verifier, &token, NOW_S);
        assert_eq!(error, Unauthenticated::MissingClaim(claim));
        assert!(error.to_string().contains(claim));
    }
}

#[test]
fn not_yet_valid_and_future_issued_tokens_are_refused() {
    let keys = ed25519();
    let verifier = verifier(&keys.jwks);
    let mut claims = grant().claims(NOW_S);
    claims.nbf = Some(NOW_S + 60);
    let token = keys.minter.sign(&claims).expect("sign");
    assert!(matches!(
        refusal(&verifier, &token, NOW_S),
        Unauthenticated::NotYetValid { .. }
    ));
    let token = keys.minter.mint(&grant(), NOW_S + 60).expect("mint");
    assert!(matches!(
        refusal(&verifier, &token, NOW_S),
        Unauthenticated::IssuedInFuture { .. }
    ));
}

#[test]
fn headers_that_are_not_bearer_jwts_are_refused() {
    let verifier = verifier(&ed25519().jwks);
    let cases = [
        (None, Unauthenticated::Missing),
        (Some("Basic dXNlcjpwdw=="), Unauthenticated::NotBearer),
        (Some("Bearer"), Unauthenticated::NotBearer),
        (Some("Bearer "), Unauthenticated::NotBearer),
    ];
    for (header, expected) in cases {
        assert_eq!(
            verifier.verify_header(header, NOW_S).expect_err("refused"),
            expected
        );
    }
    for header in [
        "Bearer a.b",
        "Bearer a.b.c",
        "Bearer a b.c.d",
        "Bearer ....",
        "bearer x.y.z",
    ] {
        assert!(
            matches!(
                verifier.verify_header(Some(header), NOW_S),
                Err(Unauthenticated::Malformed(_))
            ),
            "{header}"
        );
    }
}

#[test]
fn per_call_checks_deny_what_the_claims_do_not_grant() {
    let keys = ed25519();
    let mut g = grant();
    g.act_as = vec!["alice".into()];
    g.read_as = vec!["bank".into()];
    let token = keys.minter.mint(&g, NOW_S).expect("mint");
    let authorized = verifier(&keys.jwks).verify(&token, NOW_S).expect("valid");
    authorized.check_act_as(["alice"]).expect("alice");
    let denied = authorized
        .check_act_as(["alice", "bank"])
        .expect_err("bank is read-only");
    assert!(denied.to_string().contains("\"bank\""), "{denied}");
    authorized
        .check_read_as(["alice", "bank"])
        .expect("both readable");
    let denied = authorized.check_read_as(["bob"]).expect_err("bob");
    assert!(denied.to_string().contains("\"bob\""), "{denied}");
    authorized
        .check_user("user_id", "alice-app")
        .expect("own user");
    assert!(authorized.check_user("user_id", "mallory").is_err());
    let denied = authorized.check_admin().expect_err("no admin claim");
    assert!(denied.to_string().contains("admin"), "{denied}");
    let mut admin = g.clone();
    admin.admin = true;
    let token = keys.minter.mint(&admin, NOW_S).expect("mint");
    verifier(&keys.jwks)
        .verify(&token, NOW_S)
        .expect("valid")
        .check_admin()
        .expect("admin");
}

#[test]
fn configurations_that_cannot_verify_are_refused() {
    let bad = [
        KeySource::Jwks("not json".into()),
        KeySource::Jwks(r#"{"keys": []}"#.into()),
        KeySource::Jwks(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#.into()),
        KeySource::Pem {
            pem: b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_vec(),
            algorithm: Algorithm::EdDSA,
        },
        KeySource::Pem {
            pem: RSA_PUBLIC_PEM.as_bytes().to_vec(),
            algorithm: Algorithm::HS256,
        },
    ];
    for source in bad {
        assert!(Verifier::new(&source, settings()).is_err(), "{source:?}");
    }
    assert!(meridian_auth::verify::parse_algorithm("HS256").is_err());
    assert_eq!(
        meridian_auth::verify::parse_algorithm("ES256").expect("es256"),
        Algorithm::ES256
    );
}

fn hostile_verifier() -> &'static (Verifier, String) {
    static KEYS: std::sync::OnceLock<(Verifier, String)> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let keys = ed25519();
        let token = keys.minter.mint(&grant(), NOW_S).expect("mint");
        (verifier(&keys.jwks), token)
    })
}

proptest! {
    #![proptest_config(hostile_config_with(hostile_cases_or(2_000)))]

    /// Arbitrary header values: never a panic, never accepted.
    #[test]
    fn hostile_header_values_are_unauthenticated(header in any::<String>()) {
        let (verifier, _) = hostile_verifier();
        prop_assert!(verifier.verify_header(Some(&header), NOW_S).is_err());
    }

    /// Arbitrary token-shaped strings (base64url parts and dots).
    #[test]
    fn hostile_token_strings_are_unauthenticated(token in "[A-Za-z0-9_=.-]{0,400}") {
        let (verifier, _) = hostile_verifier();
        prop_assert!(verifier.verify_header(Some(&bearer(&token)), NOW_S).is_err());
    }

    /// Arbitrary JSON-ish headers and payloads under a real signature's shape.
    #[test]
    fn hostile_parts_are_unauthenticated(header in any::<Vec<u8>>(), payload in any::<Vec<u8>>(), keep in 0usize..3) {
        let (verifier, genuine) = hostile_verifier();
        let parts: Vec<&str> = genuine.split('.').collect();
        let header = if keep == 0 { parts[0].to_owned() } else { URL_SAFE_NO_PAD.encode(&header) };
        let payload = if keep == 1 { parts[1].to_owned() } else { URL_SAFE_NO_PAD.encode(&payload) };
        let token = format!("{header}.{payload}.{}", parts[2]);
        prop_assert!(verifier.verify_header(Some(&bearer(&token)), NOW_S).is_err());
    }

    /// One byte of a genuine token changed.
    #[test]
    fn tampered_tokens_are_unauthenticated(index in 0usize..400, byte in any::<u8>()) {
        let (verifier, genuine) = hostile_verifier();
        let mut bytes = genuine.clone().into_bytes();
        let index = index % bytes.len();
        prop_assume!(bytes[index] != byte);
        bytes[index] = byte;
        let token = String::from_utf8_lossy(&bytes).into_owned();
        // A base64url character whose last bits the decoder ignores may still decode to the
        // same signature bytes; only the genuine bytes are accepted then.
        if let Ok(authorized) = verifier.verify_header(Some(&bearer(&token)), NOW_S) {
            prop_assert_eq!(authorized.user.as_str(), "alice-app");
        }
    }
}

/// Micro-measure of a call's verification cost, uncached and cached:
/// `cargo test --release -p meridian-auth --test verify -- --ignored --nocapture cost`.
#[test]
#[ignore = "a measurement, not a check"]
fn verification_cost() {
    for (name, keys) in [("EdDSA", ed25519()), ("ES256", es256()), ("RS256", rs256())] {
        let verifier = verifier(&keys.jwks);
        let token = keys.minter.mint(&grant(), NOW_S).expect("mint");
        let header = bearer(&token);
        let rounds = 2_000u32;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            verifier.verify_uncached(&token, NOW_S).expect("valid");
        }
        let uncached = started.elapsed() / rounds;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            verifier.verify_header(Some(&header), NOW_S).expect("valid");
        }
        let cached = started.elapsed() / rounds;
        println!("{name}: uncached {uncached:?} per call, cached {cached:?} per call");
    }
}
