//! Code generated from `proto/` (Talos v1.13 wire contract).

#![allow(clippy::all, missing_docs, rustdoc::all)]

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub mod common {
    tonic::include_proto!("common");
}

pub mod machine {
    tonic::include_proto!("machine");
}

pub mod cluster {
    tonic::include_proto!("cluster");
}

pub mod storage {
    tonic::include_proto!("storage");
}

/// trustd (control planes, port 50001): workers get their apid certificate here.
pub mod security {
    tonic::include_proto!("securityapi");
}

pub mod cosi {
    pub mod resource {
        tonic::include_proto!("cosi.resource");
    }
}
