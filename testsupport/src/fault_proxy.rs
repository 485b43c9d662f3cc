//! A fault-injecting HTTP proxy on loopback, in front of a real registry: answers a status N
//! times, cuts a response body mid-way with a reset, cuts a request body mid-way (the
//! upstream gets the part sent), holds a request unanswered, corrupts a body, ignores
//! `Range`, and counts requests per path.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::http::{
    read_request_body, read_request_head, read_response, reset, write_head, write_response,
    HttpResponse,
};

/// One kind of misbehaviour.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status (and headers, e.g. `Retry-After`) instead of forwarding.
    Status {
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// Forward, then send only this many body bytes and reset the connection.
    CutBody { after_bytes: usize },
    /// Forward, but flip one byte in the middle of the body.
    CorruptBody,
    /// Forward without the request's `Range` header (the upstream answers 200 in full).
    IgnoreRange,
    /// Forward (the upstream acts on the request), then reset without answering: the client
    /// cannot know whether its request took effect.
    DropResponse,
    /// Forward, but send the body at about this many bytes a second (a slow download that
    /// a test can interrupt mid-way).
    Slow { bytes_per_second: usize },
    /// Read only this many bytes of the request's body, forward the head and those bytes
    /// (the upstream sees its client go away mid-body), then reset the connection without
    /// answering: an upload cut mid-way. Logged with status 0.
    CutRequestBody { after_bytes: usize },
    /// Read the request, forward nothing and never answer, until the client goes away or the
    /// proxy stops: a request a test can kill its client in. Logged with status 0.
    Hang,
}

#[derive(Debug, Clone)]
struct Rule {
    method: Option<String>,
    path_contains: String,
    fault: Fault,
    /// Matching requests still to let through before the fault applies.
    skip: usize,
    remaining: usize,
}

/// One request as the proxy saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxiedRequest {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    /// What the client got (the injected status if a fault answered; 0 for no answer at
    /// all, after [`Fault::CutRequestBody`] or [`Fault::Hang`]).
    pub status: u16,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    log: Vec<ProxiedRequest>,
}

/// The proxy. Its [`FaultProxy::address`] is used as the registry name in references, so
/// the registry's upload `Location`s point back through it. Stops on drop.
pub struct FaultProxy {
    address: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy in front of `upstream` (`127.0.0.1:port`).
    pub fn start(upstream: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let stopping = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_string();
        let acceptor = {
            let state = state.clone();
            let stopping = stopping.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    let upstream = upstream.clone();
                    let stopping = stopping.clone();
                    std::thread::spawn(move || {
                        proxy_connection(stream, &upstream, &state, &stopping)
                    });
                }
            })
        };
        Ok(FaultProxy {
            address,
            state,
            stopping,
            acceptor: Some(acceptor),
        })
    }

    /// `127.0.0.1:port`
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// Injects `fault` into the next `times` requests whose path contains `path_contains`
    /// (and whose method is `method`, if given).
    pub fn inject(&self, method: Option<&str>, path_contains: &str, fault: Fault, times: usize) {
        self.inject_after(method, path_contains, fault, 0, times);
    }

    /// Like [`FaultProxy::inject`], but lets the first `skip` matching requests through
    /// untouched (e.g. to cut the second PATCH of an upload).
    pub fn inject_after(
        &self,
        method: Option<&str>,
        path_contains: &str,
        fault: Fault,
        skip: usize,
        times: usize,
    ) {
        if let Ok(mut state) = self.state.lock() {
            state.rules.push(Rule {
                method: method.map(str::to_string),
                path_contains: path_contains.to_string(),
                fault,
                skip,
                remaining: times,
            });
        }
    }

    /// Removes all pending faults.
    pub fn clear_faults(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.rules.clear();
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<ProxiedRequest> {
        self.state
            .lock()
            .map(|state| state.log.clone())
            .unwrap_or_default()
    }

    /// How many requests had a path containing `path_contains`.
    pub fn count(&self, method: Option<&str>, path_contains: &str) -> usize {
        self.requests()
            .iter()
            .filter(|request| method.is_none_or(|method| request.method == method))
            .filter(|request| request.path.contains(path_contains))
            .count()
    }

    pub fn clear_log(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.log.clear();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.address);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn take_fault(state: &Mutex<State>, method: &str, path: &str) -> Option<Fault> {
    let mut state = state.lock().ok()?;
    let rule = state.rules.iter_mut().find(|rule| {
        rule.remaining > 0
            && rule.method.as_deref().is_none_or(|wanted| wanted == method)
            && path.contains(&rule.path_contains)
    })?;
    if rule.skip > 0 {
        rule.skip -= 1;
        return None;
    }
    rule.remaining -= 1;
    Some(rule.fault.clone())
}

fn proxy_connection(
    client: TcpStream,
    upstream: &str,
    state: &Mutex<State>,
    stopping: &AtomicBool,
) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = client.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(client);
    while !stopping.load(Ordering::SeqCst) {
        let mut request = match read_request_head(&mut reader) {
            Ok(Some(request)) => request,
            _ => return,
        };
        let path = request.path().to_string();
        let range = request.header("range").map(str::to_string);
        let fault = take_fault(state, &request.method, &path);
        if let Some(Fault::CutRequestBody { after_bytes }) = &fault {
            cut_request_body(&mut reader, &writer, &request, *after_bytes, upstream);
            if let Ok(mut state) = state.lock() {
                state.log.push(ProxiedRequest {
                    method: request.method.clone(),
                    path: path.clone(),
                    range: range.clone(),
                    status: 0,
                });
            }
            return;
        }
        if read_request_body(&mut reader, &mut request).is_err() {
            return;
        }
        let log = |status: u16| {
            if let Ok(mut state) = state.lock() {
                state.log.push(ProxiedRequest {
                    method: request.method.clone(),
                    path: path.clone(),
                    range: range.clone(),
                    status,
                });
            }
        };
        if let Some(Fault::Status { status, headers }) = &fault {
            log(*status);
            let mut response =
                HttpResponse::registry_error(*status, "UNAVAILABLE", "injected fault");
            response.headers.extend(headers.iter().cloned());
            if write_response(&mut writer, &response, request.method == "HEAD").is_err() {
                return;
            }
            continue;
        }
        if matches!(fault, Some(Fault::Hang)) {
            log(0);
            hang(&mut reader, stopping);
            return;
        }
        if matches!(fault, Some(Fault::IgnoreRange)) {
            request
                .headers
                .retain(|(name, _)| !name.eq_ignore_ascii_case("range"));
        }
        // One upstream connection per request, closed by the upstream after answering.
        let Ok(mut upstream_stream) = TcpStream::connect(upstream) else {
            log(502);
            let _ = write_response(&mut writer, &HttpResponse::new(502), false);
            return;
        };
        let mut head = format!("{} {} HTTP/1.1\r\n", request.method, request.target);
        for (name, value) in &request.headers {
            if name.eq_ignore_ascii_case("connection")
                || name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding")
            {
                continue;
            }
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!(
            "Connection: close\r\nContent-Length: {}\r\n\r\n",
            request.body.len()
        ));
        if upstream_stream.write_all(head.as_bytes()).is_err()
            || upstream_stream.write_all(&request.body).is_err()
        {
            log(502);
            let _ = write_response(&mut writer, &HttpResponse::new(502), false);
            return;
        }
        let head_request = request.method == "HEAD";
        let mut upstream_reader = BufReader::new(upstream_stream);
        let Ok(answer) = read_response(&mut upstream_reader, head_request) else {
            log(502);
            let _ = write_response(&mut writer, &HttpResponse::new(502), false);
            return;
        };
        log(answer.status);
        let mut response = HttpResponse {
            status: answer.status,
            headers: answer.headers,
            body: answer.body,
        };
        match fault {
            Some(Fault::DropResponse) => {
                reset(&writer);
                return;
            }
            Some(Fault::CutBody { after_bytes }) if !head_request => {
                let _ = write_head(&mut writer, &response, response.body.len());
                let cut = after_bytes.min(response.body.len());
                let _ = writer.write_all(&response.body[..cut]);
                let _ = writer.flush();
                reset(&writer);
                return;
            }
            Some(Fault::Slow { bytes_per_second }) if !head_request => {
                if write_head(&mut writer, &response, response.body.len()).is_err() {
                    return;
                }
                // Twenty pieces a second.
                let piece = (bytes_per_second / 20).max(1);
                for part in response.body.chunks(piece) {
                    if stopping.load(Ordering::SeqCst)
                        || writer.write_all(part).is_err()
                        || writer.flush().is_err()
                    {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
            Some(Fault::CorruptBody) if !response.body.is_empty() => {
                let middle = response.body.len() / 2;
                response.body[middle] ^= 0x5a;
            }
            _ => {}
        }
        if write_response(&mut writer, &response, head_request).is_err() {
            return;
        }
    }
}

/// Reads `after_bytes` of the request's body (all of it if it is shorter or not sized by
/// `Content-Length`), sends the head and those bytes upstream, ends that connection, waits for
/// the upstream's answer (so it has acted on the part before the client retries) and resets
/// the client's connection.
fn cut_request_body(
    reader: &mut BufReader<TcpStream>,
    writer: &TcpStream,
    request: &crate::http::HttpRequest,
    after_bytes: usize,
    upstream: &str,
) {
    let length = request
        .header("content-length")
        .and_then(|value| value.trim().parse::<usize>().ok());
    let mut part = vec![0u8; length.unwrap_or(0).min(after_bytes)];
    if reader.read_exact(&mut part).is_err() {
        reset(writer);
        return;
    }
    if let Ok(mut upstream_stream) = TcpStream::connect(upstream) {
        let _ = upstream_stream.set_read_timeout(Some(Duration::from_secs(30)));
        let mut head = format!("{} {} HTTP/1.1\r\n", request.method, request.target);
        for (name, value) in &request.headers {
            if name.eq_ignore_ascii_case("connection") {
                continue;
            }
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        if upstream_stream.write_all(head.as_bytes()).is_ok()
            && upstream_stream.write_all(&part).is_ok()
            && upstream_stream.flush().is_ok()
        {
            let _ = upstream_stream.shutdown(std::net::Shutdown::Write);
            let mut answer = Vec::new();
            let _ = upstream_stream.read_to_end(&mut answer);
        }
    }
    reset(writer);
}

/// Waits until the client closes its connection (or the proxy stops), answering nothing.
fn hang(reader: &mut BufReader<TcpStream>, stopping: &AtomicBool) {
    let _ = reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)));
    let mut byte = [0u8; 1];
    while !stopping.load(Ordering::SeqCst) {
        match reader.read(&mut byte) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}
