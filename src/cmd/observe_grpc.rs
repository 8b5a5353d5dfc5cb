//! `fqdnd observe --server ADDR`: the same command against a remote Observer API (another fqdnd
//! node, or Cilium's Hubble), so one CLI works against any node. JSON lines are the protobuf JSON
//! of what the server sent (the local path prints the same text for the same flows); compact
//! lines go through fqdnd's flow model, as locally.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use fqdnd::flows::FlowFilter;
use fqdnd::flows::format::{Color, OutputFormat, Printer};
use fqdnd::hubble::ServerAddr;
use fqdnd::hubble::client::{connect, flows_request};
use fqdnd::hubble::convert::flow_response_from_proto;
use fqdnd::hubble::json::response_json;
use fqdnd::hubble::proto::observer::get_flows_response::ResponseTypes;
use fqdnd::hubble::proto::relay::NodeState;

pub fn run(
    server: &ServerAddr,
    filter: &FlowFilter,
    last: Option<usize>,
    follow: bool,
    output: OutputFormat,
    color: Color,
) -> anyhow::Result<ExitCode> {
    // `--last 0` asks for nothing; on the wire, number 0 without follow would mean something else.
    if last == Some(0) && !follow {
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async {
        let mut client = connect(server).await?;
        let request = flows_request(filter, last, follow);
        let status = |s: tonic::Status| anyhow!("{server}: {} ({:?})", s.message(), s.code());
        let mut stream = client.get_flows(request).await.map_err(status)?.into_inner();
        let stdout = io::stdout();
        let mut out = stdout.lock();
        let mut printer = Printer::new(output, color, follow);
        while let Some(response) = stream.message().await.map_err(status)? {
            let line = match &response.response_types {
                Some(ResponseTypes::Flow(_)) => match output {
                    OutputFormat::Json | OutputFormat::Jsonpb => response_json(&response) + "\n",
                    OutputFormat::Compact | OutputFormat::Table | OutputFormat::Dict => {
                        match flow_response_from_proto(&response) {
                            Some(flow) => printer.flow(&flow),
                            None => continue,
                        }
                    }
                },
                Some(ResponseTypes::LostEvents(lost)) => {
                    eprintln!("fqdnd: {} flows lost: this client did not keep up with the agent", lost.num_events_lost);
                    continue;
                }
                Some(ResponseTypes::NodeStatus(n)) => {
                    // Hubble Relay's word on its nodes; fqdnd itself never sends these.
                    let state = NodeState::try_from(n.state_change).map(|s| s.as_str_name()).unwrap_or("UNKNOWN");
                    eprintln!("fqdnd: {state}: {} {}", n.node_names.join(", "), n.message);
                    continue;
                }
                None => continue,
            };
            match out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
                other => other.context("writing flows to stdout")?,
            }
        }
        let rest = printer.finish();
        match out.write_all(rest.as_bytes()).and_then(|()| out.flush()) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
            other => other.context("writing flows to stdout").map(|()| ExitCode::SUCCESS),
        }
    })
}
