use base64::Engine;

use super::*;

fn pair() -> (SigningKey, JwtVerifier, String) {
    let (private, public) = generate_key_pair();
    (
        SigningKey::from_pem(&private).unwrap(),
        JwtVerifier::from_pem(&public).unwrap(),
        public,
    )
}

fn tenant(n: u8) -> TenantId {
    TenantId::from_bytes([n; 16])
}

#[test]
fn issued_tokens_verify_with_their_claims() {
    let (signer, verifier, _) = pair();
    for claims in [
        Claims::new(Scope::Admin),
        Claims::new(Scope::Pageserver),
        Claims::tenant(tenant(1)),
        Claims::tenant(tenant(2)).expiring_in(3600),
    ] {
        assert_eq!(verifier.verify(&signer.issue(&claims)).unwrap(), claims);
    }
}

#[test]
fn expired_tokens_are_refused_beyond_the_leeway() {
    let (signer, verifier, _) = pair();
    let mut claims = Claims::new(Scope::Admin);
    claims.exp = Some(unix_now() - EXPIRY_LEEWAY_SECONDS - 60);
    assert_eq!(
        verifier.verify(&signer.issue(&claims)),
        Err(AuthError::Expired)
    );
    claims.exp = Some(unix_now() - 1);
    assert!(verifier.verify(&signer.issue(&claims)).is_ok());
}

#[test]
fn other_keys_tampering_and_other_algorithms_are_refused() {
    let (signer, _, _) = pair();
    let (_, other, _) = pair();
    let token = signer.issue(&Claims::tenant(tenant(1)));
    assert!(matches!(other.verify(&token), Err(AuthError::Invalid(_))));

    // The payload swapped for an admin one keeps the old signature.
    let (_, verifier, public) = pair();
    let token = SigningKey::from_pem(&generate_key_pair().0)
        .unwrap()
        .issue(&Claims::tenant(tenant(1)));
    let parts: Vec<&str> = token.split('.').collect();
    let admin = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"scope":"admin"}"#);
    let forged = format!("{}.{admin}.{}", parts[0], parts[2]);
    assert!(matches!(
        verifier.verify(&forged),
        Err(AuthError::Invalid(_))
    ));

    // alg none, and HS256 keyed with the public key's text.
    let none = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
    assert!(verifier.verify(&format!("{none}.{admin}.")).is_err());
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &Claims::new(Scope::Admin),
        &EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();
    assert!(verifier.verify(&hs).is_err());
    for garbage in ["", "x", "a.b.c", "..", "\u{0}"] {
        assert!(verifier.verify(garbage).is_err(), "{garbage:?}");
    }
}

#[test]
fn tenant_claims_must_match_their_scope() {
    let (signer, verifier, _) = pair();
    let no_tenant = Claims {
        scope: Scope::Tenant,
        tenant_id: None,
        exp: None,
    };
    assert!(matches!(
        verifier.verify(&signer.issue(&no_tenant)),
        Err(AuthError::Invalid(_))
    ));
    let admin_with_tenant = Claims {
        scope: Scope::Pageserver,
        tenant_id: Some(tenant(1)),
        exp: None,
    };
    assert!(matches!(
        verifier.verify(&signer.issue(&admin_with_tenant)),
        Err(AuthError::Invalid(_))
    ));
}

#[test]
fn access_checks() {
    let admin = Claims::new(Scope::Admin);
    let t1 = Claims::tenant(tenant(1));
    let pageserver = Claims::new(Scope::Pageserver);
    let wal_readers = &[Scope::Pageserver, Scope::Safekeeper];
    for access in [
        Access::Admin,
        Access::Tenant(tenant(1)),
        Access::Scopes(&[Scope::Proxy]),
    ] {
        assert!(admin.check(&access).is_ok());
    }
    assert!(t1.check(&Access::Tenant(tenant(1))).is_ok());
    let err = t1.check(&Access::Tenant(tenant(2))).unwrap_err();
    assert!(err.is_forbidden());
    assert!(err.to_string().contains(&tenant(2).to_string()), "{err}");
    assert!(t1.check(&Access::Admin).unwrap_err().is_forbidden());
    assert!(pageserver
        .check(&Access::TenantOrScopes(tenant(1), wal_readers))
        .is_ok());
    assert!(t1
        .check(&Access::TenantOrScopes(tenant(1), wal_readers))
        .is_ok());
    assert!(Claims::new(Scope::Compute)
        .check(&Access::TenantOrScopes(tenant(1), wal_readers))
        .is_err());
    assert!(pageserver.check(&Access::Tenant(tenant(1))).is_err());
}

#[test]
fn rotation_accepts_every_key_in_the_file() {
    let (old_private, old_public) = generate_key_pair();
    let (new_private, new_public) = generate_key_pair();
    let both = JwtVerifier::from_pem(&format!("{old_public}{new_public}")).unwrap();
    for private in [&old_private, &new_private] {
        let token = SigningKey::from_pem(private)
            .unwrap()
            .issue(&Claims::new(Scope::Admin));
        assert!(both.verify(&token).is_ok());
    }
    let new_only = JwtVerifier::from_pem(&new_public).unwrap();
    let old_token = SigningKey::from_pem(&old_private)
        .unwrap()
        .issue(&Claims::new(Scope::Admin));
    assert!(new_only.verify(&old_token).is_err());
}

#[test]
fn key_files_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = generate_key_pair();
    std::fs::write(dir.path().join("private.pem"), &private).unwrap();
    std::fs::write(dir.path().join("public.pem"), &public).unwrap();
    let signer = SigningKey::from_file(&dir.path().join("private.pem")).unwrap();
    let verifier = JwtVerifier::from_file(&dir.path().join("public.pem")).unwrap();
    assert!(verifier
        .verify(&signer.issue(&Claims::new(Scope::Proxy)))
        .is_ok());

    let err = JwtVerifier::from_file(&dir.path().join("missing.pem")).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let err = JwtVerifier::from_pem(&private).unwrap_err();
    assert!(err.to_string().contains("BEGIN PUBLIC KEY"), "{err}");
    assert!(SigningKey::from_pem(&public).is_err());
    assert!(
        JwtVerifier::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
            .is_err()
    );
}

#[test]
fn bearer_headers_are_verified_and_checked() {
    let (signer, verifier, _) = pair();
    let header = format!("Bearer {}", signer.issue(&Claims::tenant(tenant(1))));
    let opens = |t| verifier.authorize_bearer(Some(&header), &Access::Tenant(tenant(t)));
    assert_eq!(opens(1).unwrap(), Claims::tenant(tenant(1)));
    assert!(opens(2).unwrap_err().is_forbidden());
    let missing = verifier.authorize_bearer(None, &Access::Admin).unwrap_err();
    assert!(matches!(missing, AuthError::Missing(_)));
    let garbage = verifier.authorize_bearer(Some("Bearer x.y.z"), &Access::Admin);
    assert!(matches!(garbage, Err(AuthError::Invalid(_))));
}

#[test]
fn bearer_headers() {
    assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc"));
    assert!(matches!(bearer_token(None), Err(AuthError::Missing(_))));
    assert!(matches!(
        bearer_token(Some("Basic abc")),
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(
        bearer_token(Some("Bearer ")),
        Err(AuthError::Invalid(_))
    ));
}

#[test]
fn scopes_parse_and_serialize_by_name() {
    for scope in Scope::ALL {
        assert_eq!(scope.name().parse::<Scope>(), Ok(scope));
    }
    assert!("root".parse::<Scope>().unwrap_err().contains("admin"));
}
