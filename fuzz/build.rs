//! The storage broker's protobuf messages (not its gRPC service), from the
//! broker's own `proto/broker.proto`, for the `broker_messages` target.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = "../storage_broker/proto";
    println!("cargo:rerun-if-changed={proto_dir}/broker.proto");
    prost_build::compile_protos(&[format!("{proto_dir}/broker.proto")], &[proto_dir])?;
    Ok(())
}
