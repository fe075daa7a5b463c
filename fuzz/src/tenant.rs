//! `pageserver/src/tenant/layer/` and `pageserver/src/tenant/metadata.rs`.

#[path = "../../pageserver/src/tenant/layer/mod.rs"]
pub mod layer;

#[path = "../../pageserver/src/tenant/metadata.rs"]
pub mod metadata;
