//! Raft's transport: JSON over HTTP to the other nodes' own listeners (`POST
//! /internal/raft/{append,vote,snapshot}`), each request carrying the cluster secret and the
//! sender's node id.

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{NODE_HEADER, SECRET_HEADER};
use crate::config::Secret;
use crate::store::raft::TypeConfig;

#[derive(Clone)]
pub struct Network {
    pub http: reqwest::Client,
    pub secret: Secret,
    pub me: u64,
}

pub struct Peer {
    net: Network,
    target: u64,
    url: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            net: self.clone(),
            target,
            url: node.addr.trim_end_matches('/').to_string(),
        }
    }
}

type Rpc<T, E> = Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl Peer {
    async fn call<Req, Resp, E>(&self, what: &str, req: &Req, option: &RPCOption) -> Rpc<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let resp = self
            .net
            .http
            .post(format!("{}/internal/raft/{what}", self.url))
            .header(SECRET_HEADER, self.net.secret.expose())
            .header(NODE_HEADER, self.net.me.to_string())
            .timeout(option.hard_ttl())
            .json(req)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() || e.is_timeout() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        let resp = resp
            .error_for_status()
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer: Result<Resp, RaftError<u64, E>> = resp
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<u64>, openraft::error::Infallible> {
        self.call("vote", &rpc, &option).await
    }
}
