//! Generates the gRPC client and server from `proto/broker.proto` (needs
//! `protoc`: Debian's `protobuf-compiler`, or `$PROTOC`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/broker.proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/broker.proto"], &["proto"])
        .map_err(|err| {
            format!("compiling proto/broker.proto (is protoc installed? apt-get install protobuf-compiler): {err}")
        })?;
    Ok(())
}
