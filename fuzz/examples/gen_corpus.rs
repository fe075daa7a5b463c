//! Writes the seed corpus, `fuzz/corpus/<target>/<name>`: small valid
//! inputs made by the project's own encoders and writers, and, with
//! `--pgdata DIR`, slices of a real PostgreSQL 15 data directory's WAL and
//! its control file. Names are deterministic; a rerun overwrites them.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus -- [--pgdata DIR]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use fuzz::key::{Key, KeyRange, SlruKind};
use fuzz::remote_timeline::{Generation, IndexPart, LayerFile};
use fuzz::tenant::layer::{DeltaLayerWriter, ImageLayerWriter, LayerName};
use fuzz::tenant::metadata::{RecordLsn, TimelineMetadata};
use fuzz::value::{ClogStatus, MultiXactStatus, RustRecord, UnreadableRecord, Value};
use pageserver_api::pagestream::{RelSpec, Request, Response};
use postgres_format::constants::*;
use postgres_format::control_file::ControlFile;
use postgres_format::relfile::{ForkNumber, RelFileNode, RelTag};
use postgres_format::wal::{RawRecord, WalStreamDecoder};
use postgres_format::wal_writer::{
    next_record_lsn, record_end, BuiltBlock, RecordBuilder, SegmentWriter,
};
use postgres_format::PgMajorVersion;
use pq_proto::replication::{
    HotStandbyFeedback, PgTimestamp, PrimaryKeepalive, PrimaryMessage, StandbyMessage,
    StandbyStatusUpdate, XLogData,
};
use pq_proto::{BeMessage, CancelKey, ColumnDesc, ErrorFields, Format, TransactionStatus};
use prost::Message;
use safekeeper_api::messages::*;
use safekeeper_api::{TermHistory, TermLsn};
use utils::{Lsn, NodeId, TenantId, TimelineId};

struct Corpus {
    root: PathBuf,
    total: usize,
}

impl Corpus {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).expect("creating a corpus directory");
        std::fs::write(dir.join(name), bytes).expect("writing a corpus file");
        self.total += bytes.len();
    }
}

fn with_prefix(prefix: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = prefix.to_vec();
    out.extend_from_slice(body);
    out
}

const SEG_1M: usize = 1 << 20;
const TENANT: [u8; 16] = [0x11; 16];
const TIMELINE: [u8; 16] = [0x22; 16];

/// A heap page with a few tuples' worth of bytes and a hole.
fn page(fill: u8) -> Vec<u8> {
    let mut page = vec![fill; BLCKSZ];
    page[..24].fill(0);
    page[12..14].copy_from_slice(&64u16.to_le_bytes());
    page[14..16].copy_from_slice(&7000u16.to_le_bytes());
    page[16..18].copy_from_slice(&8192u16.to_le_bytes());
    page[18..20].copy_from_slice(&(8192u16 | 4).to_le_bytes());
    page[64..7000].fill(0);
    page
}

/// Records written by the project's WAL writer: heap records with block
/// data, images (with a hole, LZ4-compressed or not) and main data.
fn synthetic_records() -> Vec<RecordBuilder> {
    let rel = RelFileNode {
        spc_oid: 1663,
        db_oid: 5,
        rel_node: 16384,
    };
    let block = |id: u8, image: Option<(Vec<u8>, bool)>, data: Vec<u8>| BuiltBlock {
        id,
        rel,
        fork: ForkNumber::Main,
        block: u32::from(id) + 3,
        will_init: false,
        image,
        data,
    };
    vec![
        RecordBuilder {
            rmid: RM_HEAP_ID,
            info: 0x00,
            xid: 740,
            blocks: vec![block(0, None, vec![1, 0, 2, 0, 0x18, 0, 3, 0, 0, 0])],
            main_data: vec![1, 0, 0x08],
            compress_images: false,
        },
        RecordBuilder {
            rmid: RM_HEAP_ID,
            info: 0x00,
            xid: 741,
            blocks: vec![block(0, Some((page(0x41), true)), vec![])],
            main_data: vec![2, 0, 0],
            compress_images: true,
        },
        RecordBuilder {
            rmid: RM_HEAP_ID,
            info: 0x20,
            xid: 742,
            blocks: vec![
                block(0, Some((page(0x42), true)), vec![5; 40]),
                block(1, None, vec![]),
            ],
            main_data: vec![0; 14],
            compress_images: false,
        },
        RecordBuilder {
            rmid: RM_XACT_ID,
            info: 0x80,
            xid: 742,
            blocks: vec![],
            main_data: {
                let mut d = 1234i64.to_le_bytes().to_vec();
                d.extend_from_slice(&2u32.to_le_bytes()); // xinfo: subxacts
                d.extend_from_slice(&2i32.to_le_bytes());
                d.extend_from_slice(&743u32.to_le_bytes());
                d.extend_from_slice(&744u32.to_le_bytes());
                d
            },
            compress_images: false,
        },
        RecordBuilder {
            rmid: RM_XLOG_ID,
            info: XLOG_NEXTOID,
            xid: 0,
            blocks: vec![],
            main_data: 24576u32.to_le_bytes().to_vec(),
            compress_images: false,
        },
    ]
}

/// WAL of `records` in 1 MiB segments from the start of segment 1, and
/// each record as written.
fn synthetic_wal(records: &[RecordBuilder], repeat: usize) -> (Lsn, Vec<u8>, Vec<Vec<u8>>) {
    let mut writer = SegmentWriter::new(PgMajorVersion::V15, SEG_1M, 7, 1);
    let segment_start = Lsn(SEG_1M as u64);
    let mut lsn = segment_start + SIZE_OF_XLOG_LONG_PHD as u64;
    let mut prev = Lsn(0);
    let mut written = Vec::new();
    for r in records.iter().cycle().take(records.len() * repeat) {
        let bytes = r.encode(prev);
        writer.write_record(lsn, &bytes);
        let end = record_end(lsn, bytes.len(), SEG_1M);
        prev = lsn;
        lsn = next_record_lsn(end, SEG_1M);
        written.push(bytes);
    }
    let used = (lsn - segment_start) as usize;
    let files = writer.into_files();
    let segment = &files[0].1;
    (
        segment_start,
        segment[..used.min(segment.len())].to_vec(),
        written,
    )
}

fn wal_stream_prefix(segment_exp: u8, seed: u8, start: Lsn) -> Vec<u8> {
    let mut p = vec![segment_exp, seed];
    p.extend_from_slice(&start.0.to_le_bytes());
    p
}

/// The records of a real WAL segment, and slices of it.
fn real_wal(corpus: &mut Corpus, pgdata: &Path) -> Vec<RawRecord> {
    let segment = std::fs::read(pgdata.join("pg_wal/000000010000000000000001"))
        .expect("reading the first WAL segment of --pgdata");
    let seg_size = segment.len();
    let exp = (seg_size.trailing_zeros() - 20) as u8;
    let start = Lsn(seg_size as u64);
    let mut decoder = WalStreamDecoder::new(start, PgMajorVersion::V15, seg_size).expect("decoder");
    decoder.feed_bytes(&segment);
    let mut records = Vec::new();
    while let Ok(Some(r)) = decoder.poll_decode() {
        records.push(r);
    }
    // Slices at page boundaries: the start, a record crossing pages later on,
    // and the end of WAL.
    let end = records.last().map_or(start, |r| r.end_lsn);
    let used = (end - start) as usize;
    let slices = [
        ("real_start_16k", 0usize, 16384usize),
        ("real_mid_16k", (used / 2) & !(XLOG_BLCKSZ - 1), 16384),
        (
            "real_end_16k",
            used.saturating_sub(8192) & !(XLOG_BLCKSZ - 1),
            16384,
        ),
    ];
    for (name, offset, len) in slices {
        let body = &segment[offset..(offset + len).min(seg_size)];
        let prefix = wal_stream_prefix(exp, 0x5a, start + offset as u64);
        corpus.put("wal_stream", name, &with_prefix(&prefix, body));
    }
    records
}

fn wal(corpus: &mut Corpus, pgdata: Option<&Path>) {
    let records = synthetic_records();
    let (start, stream, written) = synthetic_wal(&records, 1);
    corpus.put(
        "wal_stream",
        "synthetic",
        &with_prefix(&wal_stream_prefix(0, 1, start), &stream),
    );
    // Enough records to cross pages.
    let (start, stream, _) = synthetic_wal(&records, 4);
    let cut = stream.len().min(3 * XLOG_BLCKSZ);
    corpus.put(
        "wal_stream",
        "synthetic_pages",
        &with_prefix(&wal_stream_prefix(0, 77, start), &stream[..cut]),
    );
    for (i, bytes) in written.iter().enumerate() {
        corpus.put(
            "wal_record",
            &format!("synthetic_{i}"),
            &with_prefix(&[0], bytes),
        );
    }
    let Some(pgdata) = pgdata else {
        return;
    };
    // One record of each kind (rmgr, info, blocks, image or not), up to 10 KiB.
    let mut seen = BTreeMap::new();
    for r in real_wal(corpus, pgdata) {
        if r.bytes.len() > 10 * 1024 {
            continue;
        }
        let decoded = postgres_format::wal::DecodedRecord::decode(r.start_lsn, r.bytes.clone());
        let shape = decoded.map(|d| {
            let images: Vec<u8> = d
                .blocks
                .iter()
                .filter_map(|b| b.image.as_ref().map(|i| i.info))
                .collect();
            (d.blocks.len().min(3), images)
        });
        let Ok(shape) = shape else { continue };
        seen.entry((r.rmid(), r.info() & 0xF0, shape)).or_insert(r);
    }
    for ((rmid, info, _), r) in seen.iter().take(120) {
        let name = format!(
            "real_{}_{info:02x}_{:x}",
            rmgr_name(*rmid).unwrap_or("custom").to_lowercase(),
            r.start_lsn.0
        );
        corpus.put("wal_record", &name, &with_prefix(&[0], &r.bytes));
    }
}

fn pq(corpus: &mut Corpus) {
    use postgres_protocol::message::frontend;
    let mut fe = BytesMut::new();
    frontend::query("SELECT 1; IDENTIFY_SYSTEM", &mut fe).expect("query");
    corpus.put("pq_frontend", "query", &with_prefix(&[20], &fe));
    let mut fe = BytesMut::new();
    let mut payload = BytesMut::new();
    StandbyMessage::StatusUpdate(StandbyStatusUpdate {
        write_lsn: Lsn(0x0100_2000),
        flush_lsn: Lsn(0x0100_1000),
        apply_lsn: Lsn(0x0100_0800),
        timestamp: PgTimestamp(800_000_000_000_000),
        reply_requested: false,
    })
    .encode(&mut payload);
    frontend::CopyData::new(&payload[..])
        .expect("copy data")
        .write(&mut fe);
    let mut payload = BytesMut::new();
    StandbyMessage::HotStandbyFeedback(HotStandbyFeedback {
        timestamp: PgTimestamp(800_000_000_000_001),
        xmin: 740,
        xmin_epoch: 0,
        catalog_xmin: 730,
        catalog_xmin_epoch: 0,
    })
    .encode(&mut payload);
    frontend::CopyData::new(&payload[..])
        .expect("copy data")
        .write(&mut fe);
    frontend::copy_done(&mut fe);
    frontend::sync(&mut fe);
    frontend::terminate(&mut fe);
    corpus.put("pq_frontend", "copy_both", &with_prefix(&[20], &fe));
    let mut fe = BytesMut::new();
    frontend::password_message(b"secret", &mut fe).expect("password");
    frontend::parse("", "select $1", [23], &mut fe).expect("parse");
    frontend::copy_fail("cancelled", &mut fe).expect("copy fail");
    corpus.put(
        "pq_frontend",
        "password_parse_copyfail",
        &with_prefix(&[20], &fe),
    );

    // Server to client.
    let mut be = BytesMut::new();
    let error = ErrorFields {
        detail: Some("detail".into()),
        hint: Some("hint".into()),
        ..ErrorFields::error("42601", "syntax error")
    };
    let columns = [
        ColumnDesc::text("timeline_id"),
        ColumnDesc::new("lsn", pq_proto::oid::INT8, 8),
    ];
    let keys = ["_pq_.x".to_owned()];
    for m in [
        BeMessage::AuthenticationSasl(&["SCRAM-SHA-256"]),
        BeMessage::AuthenticationSaslContinue(b"r=abc,s=c2FsdA==,i=4096"),
        BeMessage::AuthenticationMd5Password([1, 2, 3, 4]),
        BeMessage::AuthenticationOk,
        BeMessage::ParameterStatus {
            name: "server_version",
            value: "15.8",
        },
        BeMessage::BackendKeyData(CancelKey {
            process_id: 42,
            secret_key: 7,
        }),
        BeMessage::NegotiateProtocolVersion {
            newest_minor: 0,
            unrecognized: &keys,
        },
        BeMessage::ReadyForQuery(TransactionStatus::Idle),
        BeMessage::RowDescription(&columns),
        BeMessage::DataRow(&[Some(b"de0f"), None]),
        BeMessage::CommandComplete("SELECT 1"),
        BeMessage::NoticeResponse(&error),
        BeMessage::ErrorResponse(&error),
        BeMessage::EmptyQueryResponse,
        BeMessage::ReadyForQuery(TransactionStatus::Failed),
    ] {
        m.write(&mut be).expect("encoding");
    }
    corpus.put("pq_backend", "session", &with_prefix(&[20], &be));
    let mut be = BytesMut::new();
    BeMessage::CopyBothResponse(Format::Binary)
        .write(&mut be)
        .expect("encoding");
    let mut payload = BytesMut::new();
    PrimaryMessage::XLogData(XLogData {
        wal_start: Lsn(0x0100_0028),
        wal_end: Lsn(0x0100_0100),
        timestamp: PgTimestamp(800_000_000_000_000),
        data: Bytes::from_static(&[0x41, 0, 0, 0, 0, 0, 0, 0]),
    })
    .encode(&mut payload);
    BeMessage::CopyData(&payload)
        .write(&mut be)
        .expect("encoding");
    let mut payload = BytesMut::new();
    PrimaryMessage::Keepalive(PrimaryKeepalive {
        wal_end: Lsn(0x0100_0100),
        timestamp: PgTimestamp(800_000_000_000_002),
        reply_requested: true,
    })
    .encode(&mut payload);
    BeMessage::CopyData(&payload)
        .write(&mut be)
        .expect("encoding");
    BeMessage::CopyDone.write(&mut be).expect("encoding");
    BeMessage::CopyOutResponse(Format::Text)
        .write(&mut be)
        .expect("encoding");
    BeMessage::CopyInResponse(Format::Text)
        .write(&mut be)
        .expect("encoding");
    corpus.put("pq_backend", "copy_both", &with_prefix(&[20], &be));

    // Startup packets, alone and after SSL and GSS requests.
    let startup = |params: &[(&str, &str)]| {
        let mut b = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut b).expect("startup");
        b.to_vec()
    };
    let plain = startup(&[
        ("user", "cloud_admin"),
        ("database", "postgres"),
        ("application_name", "psql"),
    ]);
    corpus.put("pq_startup", "startup", &with_prefix(&[4], &plain));
    let replication = startup(&[
        ("user", "pageserver"),
        ("replication", "true"),
        ("_pq_.x", "1"),
    ]);
    let mut b = BytesMut::new();
    frontend::ssl_request(&mut b);
    corpus.put("pq_startup", "ssl_then_startup", &with_prefix(&[0], &b));
    let mut b = BytesMut::new();
    frontend::cancel_request(42, 7, &mut b);
    corpus.put("pq_startup", "cancel", &with_prefix(&[1], &b));
    corpus.put(
        "pq_startup",
        "replication",
        &with_prefix(&[255], &replication),
    );

    // Proxy: SNI, then the startup packet with routing options.
    let routed = startup(&[
        ("user", "alice"),
        ("database", "app"),
        (
            "options",
            "-c endpoint=ep-main-1 -c search_path=a\\ b --geqo=off",
        ),
    ]);
    let sni = b"ep-main-1.localtest.me";
    let mut input = vec![sni.len() as u8];
    input.extend_from_slice(sni);
    input.extend_from_slice(&routed);
    corpus.put("proxy_routing", "options_and_sni", &input);
    let branch = startup(&[("user", "bob"), ("options", "branch=dev work_mem=64MB")]);
    corpus.put("proxy_routing", "branch", &with_prefix(&[0], &branch));
    let mut input = vec![sni.len() as u8];
    input.extend_from_slice(sni);
    input.extend_from_slice(&plain);
    corpus.put("proxy_routing", "sni_only", &input);
}

fn safekeeper(corpus: &mut Corpus) {
    let history = TermHistory(vec![
        TermLsn {
            term: 1,
            lsn: Lsn(0x0100_0028),
        },
        TermLsn {
            term: 3,
            lsn: Lsn(0x0100_2000),
        },
    ]);
    let proposer = [
        (
            "greeting",
            ProposerMessage::Greeting(ProposerGreeting {
                protocol_version: PROTOCOL_VERSION,
                pg_version: 150_008,
                proposer_id: [7; 16],
                system_id: 7_300_000_000_000_000_001,
                tenant_id: TenantId::from_bytes(TENANT),
                timeline_id: TimelineId::from_bytes(TIMELINE),
                wal_seg_size: 16 << 20,
            }),
        ),
        ("vote_request", ProposerMessage::VoteRequest { term: 3 }),
        (
            "elected",
            ProposerMessage::Elected(ProposerElected {
                term: 3,
                start_streaming_at: Lsn(0x0100_2000),
                term_history: history.clone(),
                timeline_start_lsn: Lsn(0x0100_0028),
            }),
        ),
        (
            "append",
            ProposerMessage::Append(AppendRequest {
                term: 3,
                begin_lsn: Lsn(0x0100_2000),
                end_lsn: Lsn(0x0100_2010),
                commit_lsn: Lsn(0x0100_1ff0),
                truncate_lsn: Lsn(0x0100_0028),
                wal_data: Bytes::from_static(&[
                    0x10, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                ]),
            }),
        ),
    ];
    for (name, m) in proposer {
        corpus.put(
            "safekeeper_messages",
            &format!("proposer_{name}"),
            &with_prefix(&[0], &m.encode()),
        );
    }
    let acceptor = [
        (
            "greeting",
            AcceptorMessage::Greeting {
                term: 3,
                node_id: NodeId(1),
            },
        ),
        (
            "vote",
            AcceptorMessage::Vote(VoteResponse {
                term: 3,
                vote_given: true,
                flush_lsn: Lsn(0x0100_2000),
                truncate_lsn: Lsn(0x0100_0028),
                term_history: history,
                timeline_start_lsn: Lsn(0x0100_0028),
            }),
        ),
        (
            "append",
            AcceptorMessage::Append(AppendResponse {
                term: 3,
                flush_lsn: Lsn(0x0100_2010),
                commit_lsn: Lsn(0x0100_2000),
                pageserver_last_record_lsn: Lsn(0x0100_1000),
            }),
        ),
    ];
    for (name, m) in acceptor {
        corpus.put(
            "safekeeper_messages",
            &format!("acceptor_{name}"),
            &with_prefix(&[1], &m.encode()),
        );
    }
    let mut state = fuzz::acceptor::PersistentState::new(
        TenantId::from_bytes(TENANT),
        TimelineId::from_bytes(TIMELINE),
        fuzz::acceptor::ServerInfo {
            pg_version: 150_008,
            system_id: 7_300_000_000_000_000_001,
            wal_seg_size: 16 << 20,
        },
    );
    state.term = 3;
    state.term_history = TermHistory(vec![TermLsn {
        term: 3,
        lsn: Lsn(0x0100_0028),
    }]);
    state.commit_lsn = Lsn(0x0100_2000);
    let file = fuzz::state_file::encode(&state).expect("encoding the control state");
    corpus.put(
        "safekeeper_control_file",
        "state",
        &with_prefix(&[0], &file),
    );
    // Sequences of operations for the acceptor: bytes that `arbitrary`
    // reads as greetings, votes, elections and appends (any bytes do).
    let mut seed = 0x9E37_79B9u32;
    for (i, len) in [64usize, 256, 1024].into_iter().enumerate() {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed >> 8) as u8
            })
            .collect();
        corpus.put("safekeeper_acceptor", &format!("ops_{i}"), &bytes);
    }
}

fn pagestream(corpus: &mut Corpus) {
    let rel = RelSpec {
        spc_oid: 1663,
        db_oid: 5,
        rel_node: 16384,
        fork: 0,
    };
    let requests = [
        (
            "exists",
            Request::Exists {
                lsn: Lsn(0x0100_2000),
                rel,
            },
        ),
        (
            "nblocks",
            Request::Nblocks {
                lsn: Lsn(0x0100_2000),
                rel,
            },
        ),
        (
            "get_page",
            Request::GetPage {
                lsn: Lsn(0x0100_2000),
                rel,
                block: 7,
            },
        ),
        (
            "get_latest_page",
            Request::GetLatestPage {
                not_modified_since: Lsn(0x0100_1000),
                rel,
                block: 7,
            },
        ),
        (
            "db_size",
            Request::DbSize {
                lsn: Lsn(0x0100_2000),
                db_oid: 5,
            },
        ),
        (
            "slru_segment",
            Request::GetSlruSegment {
                lsn: Lsn(0x0100_2000),
                kind: 1,
                segment: 2,
            },
        ),
    ];
    for (name, r) in requests {
        corpus.put(
            "pagestream",
            &format!("request_{name}"),
            &with_prefix(&[0], &r.encode()),
        );
    }
    let responses = [
        ("exists", Response::Exists(true)),
        ("nblocks", Response::Nblocks(12)),
        ("page", Response::Page(Bytes::from(page(0x33)))),
        ("db_size", Response::DbSize(8 << 20)),
        (
            "error",
            Response::Error("relation 1663/5/16384 does not exist".into()),
        ),
    ];
    for (name, r) in responses {
        corpus.put(
            "pagestream",
            &format!("response_{name}"),
            &with_prefix(&[1], &r.encode()),
        );
    }
    let sizes = [
        pageserver_api::lazy::RelationSize { rel, blocks: 12 },
        pageserver_api::lazy::RelationSize {
            rel: RelSpec { fork: 2, ..rel },
            blocks: 1,
        },
    ];
    let text = pageserver_api::lazy::format(&sizes);
    corpus.put(
        "pagestream",
        "relation_sizes",
        &with_prefix(&[2], text.as_bytes()),
    );
}

fn control_file(corpus: &mut Corpus, pgdata: Option<&Path>) {
    let Some(pgdata) = pgdata else { return };
    let bytes = std::fs::read(pgdata.join("global/pg_control")).expect("reading pg_control");
    let control = ControlFile::decode(&bytes, PgMajorVersion::V15).expect("a valid pg_control");
    // The struct part is what matters; the rest of the 8 KiB is zeros.
    corpus.put("control_file", "real", &with_prefix(&[0], &bytes[..512]));
    corpus.put(
        "control_file",
        "encoded",
        &with_prefix(&[1], &control.encode()[..320]),
    );
    corpus.put(
        "control_file",
        "checkpoint",
        &with_prefix(&[0], &control.checkpoint_copy.encode()),
    );
}

fn metadata(dc: u64, ancestor: bool) -> TimelineMetadata {
    TimelineMetadata {
        disk_consistent: RecordLsn {
            last: Lsn(dc),
            prev: Lsn(dc - 0x40),
        },
        ancestor: ancestor.then(|| (TimelineId::from_bytes([0x33; 16]), Lsn(0x0100_1000))),
        start_lsn: Lsn(0x0100_0028),
        gc_horizon: Lsn(0x0100_0800),
        pg_version: PgMajorVersion::V15,
    }
}

fn pageserver(corpus: &mut Corpus) {
    corpus.put(
        "timeline_metadata",
        "root",
        &with_prefix(&[0], &metadata(0x0100_2000, false).encode()),
    );
    corpus.put(
        "timeline_metadata",
        "branch",
        &with_prefix(&[0], &metadata(0x0100_3000, true).encode()),
    );

    let rel = RelTag {
        node: RelFileNode {
            spc_oid: 1663,
            db_oid: 5,
            rel_node: 16384,
        },
        fork: ForkNumber::Main,
    };
    let record = synthetic_records()[0].encode(Lsn(0x0100_0000));
    let values = [
        ("image", Value::Image(Bytes::from(page(0x44)))),
        (
            "small_image",
            Value::Image(Bytes::copy_from_slice(&12u32.to_le_bytes())),
        ),
        (
            "unreadable",
            Value::Unreadable(UnreadableRecord {
                lsn: Lsn(0x0100_0028),
                rmgr: RM_HASH_ID,
                info: 0x10,
            }),
        ),
        (
            "wal_record",
            Value::Delta(RustRecord::WalRecord {
                start_lsn: Lsn(0x0100_0028),
                end_lsn: Lsn(0x0100_0028 + record.len() as u64),
                block_id: 0,
                will_init: false,
                record: Bytes::from(record),
            }),
        ),
        (
            "clog",
            Value::Delta(RustRecord::ClogSetStatus {
                xids: vec![740, 741, 745],
                status: ClogStatus::Committed,
            }),
        ),
        (
            "vm_clear",
            Value::Delta(RustRecord::VmClearBits {
                heap_blocks: vec![3, 4],
                all_visible: true,
            }),
        ),
        (
            "multixact_offset",
            Value::Delta(RustRecord::MultixactOffset {
                multi: 9,
                offset: 20,
            }),
        ),
        (
            "multixact_members",
            Value::Delta(RustRecord::MultixactMembers {
                first_offset: 20,
                members: vec![
                    (740, MultiXactStatus::ForShare),
                    (741, MultiXactStatus::Update),
                ],
            }),
        ),
    ];
    for (name, v) in &values {
        corpus.put("pageserver_value", name, &v.encode());
    }

    // Layer files written by the pageserver's writers, small blocks so
    // that there are several.
    let dir = std::env::temp_dir().join(format!("gen-corpus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let keys: Vec<Key> = (0..6).map(|b| Key::rel_block(rel, b)).collect();
    let range = KeyRange::new(Key::rel_size(rel), Key::twophase_file(1));
    let key_range = KeyRange::new(keys[0], range.end);
    let delta_path = dir.join("delta");
    let mut delta =
        DeltaLayerWriter::new(&delta_path, key_range, Lsn(0x0100_0000)..Lsn(0x0100_3000))
            .expect("a delta writer");
    delta.set_target_block_size(256);
    for (i, key) in keys.iter().enumerate() {
        let small = Value::Image(Bytes::from(vec![i as u8; 40]));
        delta.put(*key, Lsn(0x0100_0028), &small).expect("put");
        // A WAL record or a CLOG change on top of the image.
        let (_, delta_value) = &values[3 + i % 2];
        delta
            .put(*key, Lsn(0x0100_1000 + i as u64), delta_value)
            .expect("put");
    }
    delta.finish().expect("finishing the delta layer");
    let image_path = dir.join("image");
    let mut image =
        ImageLayerWriter::new(&image_path, key_range, Lsn(0x0100_2000)).expect("an image writer");
    image.set_target_block_size(200);
    for (i, key) in keys.iter().enumerate() {
        image
            .put(*key, Bytes::from(vec![i as u8; 64]))
            .expect("put");
    }
    image
        .put(
            Key::slru_page(SlruKind::Clog, 0, 0),
            Bytes::from(vec![0x55; 100]),
        )
        .expect("put");
    image.finish().expect("finishing the image layer");
    let delta_bytes = std::fs::read(&delta_path).expect("reading the delta layer");
    let image_bytes = std::fs::read(&image_path).expect("reading the image layer");
    std::fs::remove_dir_all(&dir).expect("removing the temporary directory");
    corpus.put("layer_file", "delta", &with_prefix(&[0], &delta_bytes));
    corpus.put(
        "layer_file",
        "delta_fixing_crcs",
        &with_prefix(&[1], &delta_bytes),
    );
    corpus.put("layer_file", "image", &with_prefix(&[0], &image_bytes));
    corpus.put(
        "layer_file",
        "image_fixing_crcs",
        &with_prefix(&[1], &image_bytes),
    );

    let delta_name = LayerName::Delta {
        key_range,
        lsn_range: Lsn(0x0100_0000)..Lsn(0x0100_3000),
    };
    let image_name = LayerName::Image {
        key_range,
        lsn: Lsn(0x0100_2000),
    };
    let index = IndexPart {
        metadata: metadata(0x0100_3000, true),
        layers: BTreeMap::from([
            (
                delta_name.clone(),
                LayerFile {
                    file_size: delta_bytes.len() as u64,
                    generation: Generation::FIRST,
                },
            ),
            (
                image_name.clone(),
                LayerFile {
                    file_size: image_bytes.len() as u64,
                    generation: Generation(2),
                },
            ),
        ]),
    };
    corpus.put("index_part", "index_part.json", &index.to_bytes());
    corpus.put(
        "file_names",
        "delta_layer",
        delta_name.to_string().as_bytes(),
    );
    corpus.put(
        "file_names",
        "image_layer",
        image_name.to_string().as_bytes(),
    );
    corpus.put("file_names", "key", keys[1].to_string().as_bytes());
    corpus.put(
        "file_names",
        "wal_segment",
        b"000000010000000A000000FF.partial",
    );
    corpus.put("file_names", "relation_segment", b"16384_vm.2");
}

fn broker(corpus: &mut Corpus) {
    let info = fuzz::broker_info::SafekeeperTimelineInfo {
        safekeeper_id: NodeId(1),
        tenant_id: TenantId::from_bytes(TENANT),
        timeline_id: TimelineId::from_bytes(TIMELINE),
        term: 3,
        last_log_term: 3,
        flush_lsn: Lsn(0x0100_2010),
        commit_lsn: Lsn(0x0100_2000),
        backup_lsn: Lsn(0x0100_0000),
        remote_consistent_lsn: Lsn(0x0100_1000),
        peer_horizon_lsn: Lsn(0x0100_0028),
        local_start_lsn: Lsn(0x0100_0028),
        safekeeper_connstr: "127.0.0.1:5454".into(),
        http_connstr: "127.0.0.1:7676".into(),
    };
    let message = fuzz::proto::SafekeeperTimelineInfo::from(info);
    corpus.put(
        "broker_messages",
        "timeline_info",
        &with_prefix(&[0], &message.encode_to_vec()),
    );
    use fuzz::proto::subscribe_safekeeper_info_request::SubscriptionKey;
    let all = fuzz::proto::SubscribeSafekeeperInfoRequest {
        subscription_key: Some(SubscriptionKey::All(fuzz::proto::Empty {})),
    };
    corpus.put(
        "broker_messages",
        "subscribe_all",
        &with_prefix(&[1], &all.encode_to_vec()),
    );
    let one = fuzz::proto::SubscribeSafekeeperInfoRequest {
        subscription_key: Some(SubscriptionKey::TenantTimelineId(
            fuzz::proto::TenantTimelineId::new(
                TenantId::from_bytes(TENANT),
                TimelineId::from_bytes(TIMELINE),
            ),
        )),
    };
    corpus.put(
        "broker_messages",
        "subscribe_one",
        &with_prefix(&[1], &one.encode_to_vec()),
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut pgdata = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--pgdata" => pgdata = Some(PathBuf::from(args.next().expect("--pgdata DIR"))),
            other => panic!("unknown argument {other:?}; usage: gen_corpus [--pgdata DIR]"),
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut corpus = Corpus { root, total: 0 };
    wal(&mut corpus, pgdata.as_deref());
    pq(&mut corpus);
    safekeeper(&mut corpus);
    pagestream(&mut corpus);
    control_file(&mut corpus, pgdata.as_deref());
    pageserver(&mut corpus);
    broker(&mut corpus);
    println!(
        "wrote {} bytes of seeds under {}",
        corpus.total,
        corpus.root.display()
    );
}
