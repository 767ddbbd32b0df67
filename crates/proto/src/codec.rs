//! The tonic codec of every Meridian gRPC server: prost's encoding, but a request that does not
//! decode is answered `INVALID_ARGUMENT` naming the message type and what was wrong.
//!
//! tonic's `ProstCodec` answers a `prost::DecodeError` with `INTERNAL`, a server-fault code,
//! although the bytes came from the client (invalid UTF-8 in a string field, a truncated
//! varint). A client library then reports a server bug, and retry policies that retry
//! `INTERNAL` resend the same bad bytes. The generated servers use [`ServerCodec`] (set per
//! service in `build.rs`); the generated clients keep `ProstCodec`, because for a client a
//! response that does not decode *is* the server's fault.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstEncoder};

/// Prost encoding with client-error decode failures; see the module docs.
#[derive(Debug, Clone)]
pub struct ServerCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for ServerCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for ServerCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder { _type: PhantomData }
    }
}

/// Decodes a request message; a failure is the client's (`INVALID_ARGUMENT`).
#[derive(Debug, Clone)]
pub struct RequestDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|error| decode_error_status::<U>(&error))
    }
}

/// `INVALID_ARGUMENT` for a request of type `U` that did not decode. prost's description
/// names the field path where it can (`SubmitAndWaitRequest.command_id: invalid string value:
/// data is not UTF-8 encoded`); the message type leads, because for a broken length or varint
/// at the top level prost can name no field.
pub fn decode_error_status<U>(error: &prost::DecodeError) -> Status {
    Status::invalid_argument(format!(
        "the request is not a valid {}: {}",
        message_name::<U>(),
        // prost's Display starts with "failed to decode Protobuf message: "; the description
        // alone is what the caller needs after our own lead.
        error
            .to_string()
            .trim_start_matches("failed to decode Protobuf message: ")
    ))
}

/// `meridian.v1.SubmitAndWaitRequest` for the generated `meridian_proto::v1::SubmitAndWaitRequest`
/// (the name a caller finds in the .proto files), the Rust path for anything else.
fn message_name<U>() -> String {
    let rust = std::any::type_name::<U>();
    match rust.strip_prefix("meridian_proto::v1::") {
        Some(name) if !name.contains("::") => format!("meridian.v1.{name}"),
        _ => rust.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    #[test]
    fn a_decode_error_is_invalid_argument_naming_type_and_field() {
        // Field 2 (command_id), length 1, byte 0xff: not UTF-8.
        let error = v1::SubmitAndWaitRequest::decode(&[0x12, 0x01, 0xff][..])
            .expect_err("0xff is not UTF-8");
        let status = decode_error_status::<v1::SubmitAndWaitRequest>(&error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("the request is not a valid meridian.v1.SubmitAndWaitRequest: "),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("command_id"),
            "{}",
            status.message()
        );
    }
}
