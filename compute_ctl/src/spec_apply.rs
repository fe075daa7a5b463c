//! Bringing a running compute's roles and databases to what the spec says.
//!
//! Roles and databases listed in the spec are created, or altered to match
//! (password, owner); a new role may create objects in the `postgres`
//! database's `public` schema (which PostgreSQL 15 keeps to its owner);
//! `delta_operations` drop and rename. Nothing else is
//! touched: objects users made themselves stay. Passwords reach postgres
//! only as SCRAM-SHA-256 verifiers.

use std::collections::HashMap;

use anyhow::Context;
use compute_api::{ComputeSpec, DeltaOp};
use pq_proto::Client;
use tracing::info;

use crate::pg::SUPERUSER;

/// `"name"` with quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with quotes doubled (`standard_conforming_strings` is on).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The verifier stored for a role, hashing a clear-text password.
pub fn role_verifier(role: &compute_api::Role) -> Option<String> {
    match (&role.password, &role.encrypted_password) {
        (Some(password), _) => Some(postgres_protocol::password::scram_sha_256(
            password.as_bytes(),
        )),
        (None, Some(verifier)) => Some(verifier.clone()),
        (None, None) => None,
    }
}

async fn exec(client: &mut Client, sql: &str, what: &str) -> anyhow::Result<()> {
    client
        .simple_query(sql)
        .await
        .with_context(|| what.to_owned())?;
    Ok(())
}

async fn single_column_map(
    client: &mut Client,
    sql: &str,
) -> anyhow::Result<HashMap<String, String>> {
    let rows = client
        .simple_query(sql)
        .await
        .with_context(|| sql.to_owned())?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.get(0)?.to_owned(), r.get(1).unwrap_or("").to_owned())))
        .collect())
}

/// Applies the spec's roles, databases and delta operations.
pub async fn apply(client: &mut Client, spec: &ComputeSpec) -> anyhow::Result<()> {
    let roles_sql = "SELECT rolname, rolsuper::text FROM pg_roles";
    let dbs_sql = "SELECT datname, pg_get_userbyid(datdba) FROM pg_database";

    for op in &spec.delta_operations {
        let roles = single_column_map(client, roles_sql).await?;
        let dbs = single_column_map(client, dbs_sql).await?;
        match op {
            DeltaOp::DeleteRole { name } => {
                if roles.get(name).is_some_and(|s| s == "true") {
                    anyhow::bail!("refusing to drop role {name:?}: it is a superuser");
                }
                if roles.contains_key(name) {
                    info!(role = name, "dropping role");
                    let sql = format!("REVOKE CREATE ON SCHEMA public FROM {}", quote_ident(name));
                    exec(
                        client,
                        &sql,
                        &format!("revoking role {name:?}'s CREATE on schema public"),
                    )
                    .await?;
                    let sql = format!("DROP ROLE {}", quote_ident(name));
                    exec(client, &sql, &format!("dropping role {name:?}")).await?;
                }
            }
            DeltaOp::RenameRole { name, new_name } => {
                if roles.get(name).is_some_and(|s| s == "true") {
                    anyhow::bail!("refusing to rename role {name:?}: it is a superuser");
                }
                if roles.contains_key(name) && !roles.contains_key(new_name) {
                    info!(role = name, new_name, "renaming role");
                    let sql = format!(
                        "ALTER ROLE {} RENAME TO {}",
                        quote_ident(name),
                        quote_ident(new_name)
                    );
                    exec(client, &sql, &format!("renaming role {name:?}")).await?;
                }
            }
            DeltaOp::DeleteDb { name } => {
                if dbs.contains_key(name) {
                    info!(database = name, "dropping database");
                    let sql = format!("DROP DATABASE {} WITH (FORCE)", quote_ident(name));
                    exec(client, &sql, &format!("dropping database {name:?}")).await?;
                }
            }
            DeltaOp::RenameDb { name, new_name } => {
                if dbs.contains_key(name) && !dbs.contains_key(new_name) {
                    info!(database = name, new_name, "renaming database");
                    let sql = format!(
                        "ALTER DATABASE {} RENAME TO {}",
                        quote_ident(name),
                        quote_ident(new_name)
                    );
                    exec(client, &sql, &format!("renaming database {name:?}")).await?;
                }
            }
        }
    }

    let roles = single_column_map(client, roles_sql).await?;
    for role in &spec.roles {
        let name = quote_ident(&role.name);
        let password = role_verifier(role)
            .map(|v| format!(" PASSWORD {}", quote_literal(&v)))
            .unwrap_or_default();
        match roles.get(&role.name).map(String::as_str) {
            Some("true") => {
                anyhow::bail!(
                    "role {:?} exists and is a superuser: specs manage ordinary roles only",
                    role.name
                )
            }
            Some(_) => {
                info!(role = role.name, "altering role");
                let sql = format!("ALTER ROLE {name} WITH LOGIN NOSUPERUSER{password}");
                exec(client, &sql, &format!("altering role {:?}", role.name)).await?;
            }
            None => {
                info!(role = role.name, "creating role");
                let sql = format!("CREATE ROLE {name} WITH LOGIN CREATEDB{password}");
                exec(client, &sql, &format!("creating role {:?}", role.name)).await?;
                // PostgreSQL 15 lets only the owner create in `public`.
                let sql = format!("GRANT CREATE ON SCHEMA public TO {name}");
                exec(
                    client,
                    &sql,
                    &format!("granting role {:?} CREATE on schema public", role.name),
                )
                .await?;
            }
        }
    }

    let dbs = single_column_map(client, dbs_sql).await?;
    for db in &spec.databases {
        let owner = db.owner.as_deref().unwrap_or(SUPERUSER);
        match dbs.get(&db.name) {
            Some(current) if current == owner => {}
            Some(_) => {
                info!(database = db.name, owner, "changing the owner of database");
                let sql = format!(
                    "ALTER DATABASE {} OWNER TO {}",
                    quote_ident(&db.name),
                    quote_ident(owner)
                );
                exec(client, &sql, &format!("altering database {:?}", db.name)).await?;
            }
            None => {
                info!(database = db.name, owner, "creating database");
                let sql = format!(
                    "CREATE DATABASE {} OWNER {}",
                    quote_ident(&db.name),
                    quote_ident(owner)
                );
                exec(client, &sql, &format!("creating database {:?}", db.name)).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn passwords_become_scram_verifiers() {
        let role = compute_api::Role {
            name: "alice".into(),
            password: Some("secret".into()),
            encrypted_password: None,
        };
        let verifier = role_verifier(&role).unwrap();
        assert!(
            compute_api::spec::is_scram_verifier(&verifier),
            "{verifier}"
        );
        assert!(!verifier.contains("secret"));
    }
}
