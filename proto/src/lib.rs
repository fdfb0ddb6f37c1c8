//! The Medic wire protocol: generated types and gRPC client/server for `medic.v1`.

pub mod codec;

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("medic.v1");
}

/// The protocol version this build speaks. Bump on any incompatible change to `medic.v1`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Oldest agent protocol version the controller still accepts.
pub const MIN_SUPPORTED_PROTOCOL_VERSION: u32 = 1;

impl v1::Label {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self { name: name.into(), value: value.into() }
    }
}
