//! A controller serves a fleet: one broken, hostile or outdated client must get a clear error and
//! must not disturb anyone else.

use anyhow::{Result, bail};
use bytes::{Buf, BufMut};
use medic_proto::v1::telemetry_client::TelemetryClient;
use medic_proto::v1::{AgentMessage, Batch, Hello, LogRecord, agent_message};
use medic_tests::*;
use prost::Message;
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

/// Sends and receives raw bytes as gRPC messages, so a test can put anything on the wire.
#[derive(Default, Clone)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

fn hello(node: &str, version: u32) -> AgentMessage {
    AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            node: node.into(),
            protocol_version: version,
            spool_id: "test-spool".into(),
            agent_version: "test".into(),
            ..Default::default()
        })),
    }
}

/// Opens a raw stream, sends `messages`, and returns the status the controller ends it with.
async fn raw_stream(url: &str, messages: Vec<Vec<u8>>) -> Result<tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?.connect().await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for m in messages {
        tx.send(m).await?;
    }
    let path = PathAndQuery::from_static("/medic.v1.Telemetry/Stream");
    let req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let result = grpc.streaming(req, path, RawCodec).await;
    let mut inbound = match result {
        Err(status) => return Ok(status),
        Ok(r) => r.into_inner(),
    };
    // Accepted at first (a valid hello): the error comes on the stream.
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return tonic::Status::ok("stream closed without an error"),
                Err(s) => return s,
            }
        }
    })
    .await;
    drop(tx);
    match outcome {
        Ok(s) => Ok(s),
        Err(_) => bail!("the controller neither refused nor ended the stream"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_outdated_clients_are_refused_and_others_keep_streaming() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let controller = ControllerProc::start(&dir.path().join("c"), free_port(), free_port(), &[]).await?;
    let good = AgentProc::start(
        &controller.grpc_url(),
        "good",
        &dir.path().join("spool"),
        free_port(),
        &["--interval", "200ms"],
    )
    .await?;
    let seq_of_good = || async {
        let nodes = controller.nodes().await?;
        Ok::<u64, anyhow::Error>(nodes.get("good").and_then(|n| n["last_seq"].as_u64()).unwrap_or(0))
    };
    eventually(Duration::from_secs(10), || async { Ok((seq_of_good().await? > 2).then_some(())) }).await?;

    // An agent from the future: refused before anything is stored, with a status that says why.
    let mut client =
        TelemetryClient::new(tonic::transport::Endpoint::from_shared(controller.grpc_url())?.connect().await?);
    let outdated = tokio_stream::iter(vec![hello("time-traveller", 99)]);
    let status = client.stream(outdated).await.expect_err("protocol 99 must be refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("protocol version 99"), "{}", status.message());

    // Bytes that are not a protobuf message at all.
    let status = raw_stream(&controller.grpc_url(), vec![vec![0xff; 64]]).await?;
    assert_ne!(status.code(), tonic::Code::Ok, "garbage must not be accepted: {status:?}");

    // A valid hello followed by garbage: the session ends with an error.
    let status = raw_stream(
        &controller.grpc_url(),
        vec![hello("garbler", 1).encode_to_vec(), vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]],
    )
    .await?;
    assert_ne!(status.code(), tonic::Code::Ok, "a malformed batch must end the stream: {status:?}");

    // A batch larger than the 16 MiB limit.
    let huge = AgentMessage {
        msg: Some(agent_message::Msg::Batch(Batch {
            seq: 1,
            logs: vec![LogRecord { message: "x".repeat(17 << 20), ..Default::default() }],
            ..Default::default()
        })),
    };
    let status =
        raw_stream(&controller.grpc_url(), vec![hello("hoarder", 1).encode_to_vec(), huge.encode_to_vec()]).await?;
    assert!(matches!(status.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted), "{status:?}");
    assert!(status.message().contains("too large"), "{}", status.message());

    // A hello for an invalid node name.
    let status = raw_stream(&controller.grpc_url(), vec![hello("../../etc", 1).encode_to_vec()]).await?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // Meanwhile the good agent kept streaming, with nothing lost, and nothing bad was stored.
    let before = seq_of_good().await?;
    eventually(Duration::from_secs(10), || async { Ok((seq_of_good().await? > before + 3).then_some(())) }).await?;
    let nodes = controller.nodes().await?;
    assert_eq!(nodes["good"]["seq_gaps"], 0);
    assert_eq!(nodes["good"]["connected"], true);
    assert!(!nodes.contains_key("hoarder") || nodes["hoarder"]["batches"] == 0, "the oversized batch was not stored");
    assert!(!nodes.contains_key("../../etc"));

    let m = scrape(&controller.url("/metrics")).await?;
    let rejected = |reason: &str| {
        m.get(&format!("medic_ingest_streams_rejected_total{{reason=\"{reason}\"}}")).copied().unwrap_or(0.0)
    };
    assert_eq!(rejected("protocol_version"), 1.0);
    assert!(rejected("oversized") >= 1.0, "{m:?}");
    assert!(rejected("malformed") >= 1.0);
    drop(good);
    Ok(())
}
