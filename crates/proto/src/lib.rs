//! Wire types and tonic service stubs for Meridian's gRPC APIs, generated at build time from
//! `proto/meridian/v1` with protox (no system `protoc`), plus the one place where wire types
//! are converted to and from the validated domain types of `meridian-core`.

pub mod codec;
pub mod convert;

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("meridian.v1");
}

/// Encoded `FileDescriptorSet` of all Meridian protos, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("meridian_descriptor");
