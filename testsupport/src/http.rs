//! A small blocking HTTP/1.1 server on loopback, for in-test servers that must misbehave in
//! exact ways (schema1 answers, wrong digests, redirects), and the request parsing the fault
//! proxy shares.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const MAX_HEAD: usize = 64 * 1024;

/// A parsed request.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// Decoded query parameters, in order.
    pub fn query(&self) -> Vec<(String, String)> {
        match self.target.split_once('?') {
            Some((_, query)) => url_decode_pairs(query),
            None => Vec::new(),
        }
    }
}

/// A response to send.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn new(status: u16) -> Self {
        HttpResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// A registry-style error body: `{"errors":[{"code":..,"message":..}]}`.
    pub fn registry_error(status: u16, code: &str, message: &str) -> Self {
        let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
        HttpResponse::new(status)
            .header("Content-Type", "application/json")
            .body(body.to_string())
    }
}

/// What a handler wants done with a request.
#[derive(Debug, Clone)]
pub enum Reply {
    Respond(HttpResponse),
    /// Send the head (with the full Content-Length) and this many body bytes, then reset.
    CutAfter(HttpResponse, usize),
}

impl From<HttpResponse> for Reply {
    fn from(response: HttpResponse) -> Self {
        Reply::Respond(response)
    }
}

type Handler = dyn Fn(&HttpRequest) -> Reply + Send + Sync;

/// A served connection: plain TCP or TLS over TCP.
trait Connection: Read + Write {
    fn tcp(&self) -> &TcpStream;
}

impl Connection for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Connection for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// A blocking HTTP server on a loopback address, one thread per connection. Stops on drop.
pub struct HttpServer {
    address: std::net::SocketAddr,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    log: Arc<Mutex<Vec<HttpRequest>>>,
    tls: bool,
}

impl HttpServer {
    /// Serves on `ip` (say `127.0.0.1` or `127.0.0.2`), on a free port.
    pub fn start(
        ip: &str,
        handler: impl Fn(&HttpRequest) -> Reply + Send + Sync + 'static,
    ) -> io::Result<Self> {
        Self::start_inner(ip, None, handler)
    }

    /// Serves HTTPS on `ip` with a fresh self-signed certificate for `127.0.0.1`, `127.0.0.2`
    /// and `localhost`; returns the server and the certificate's PEM (to trust it).
    pub fn start_tls(
        ip: &str,
        handler: impl Fn(&HttpRequest) -> Reply + Send + Sync + 'static,
    ) -> io::Result<(Self, String)> {
        let failed = |error: String| io::Error::other(format!("TLS setup: {error}"));
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|error| failed(error.to_string()))?;
        let params = rcgen::CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "127.0.0.2".to_string(),
        ])
        .map_err(|error| failed(error.to_string()))?;
        let certificate = params
            .self_signed(&key_pair)
            .map_err(|error| failed(error.to_string()))?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(key_pair.serialize_der()),
        );
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|error| failed(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![certificate.der().clone()], key)
        .map_err(|error| failed(error.to_string()))?;
        let server = Self::start_inner(ip, Some(Arc::new(config)), handler)?;
        Ok((server, certificate.pem()))
    }

    fn start_inner(
        ip: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: impl Fn(&HttpRequest) -> Reply + Send + Sync + 'static,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind((ip, 0))?;
        let address = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let is_tls = tls.is_some();
        let acceptor = {
            let stopping = stopping.clone();
            let log = log.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let handler = handler.clone();
                    let log = log.clone();
                    let stopping = stopping.clone();
                    let tls = tls.clone();
                    std::thread::spawn(move || {
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                        match tls {
                            None => serve_connection(stream, &*handler, &log, &stopping),
                            Some(config) => {
                                let Ok(session) = rustls::ServerConnection::new(config) else {
                                    return;
                                };
                                let stream = rustls::StreamOwned::new(session, stream);
                                serve_connection(stream, &*handler, &log, &stopping)
                            }
                        }
                    });
                }
            })
        };
        Ok(HttpServer {
            address,
            stopping,
            acceptor: Some(acceptor),
            log,
            tls: is_tls,
        })
    }

    /// `ip:port`, usable as a registry name.
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// `http://ip:port` (or `https://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.address)
    }

    /// Every request served so far.
    pub fn requests(&self) -> Vec<HttpRequest> {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect(self.address);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn serve_connection<C: Connection>(
    stream: C,
    handler: &Handler,
    log: &Mutex<Vec<HttpRequest>>,
    stopping: &AtomicBool,
) {
    let mut reader = BufReader::new(stream);
    while !stopping.load(Ordering::SeqCst) {
        let request = match read_request(&mut reader) {
            Ok(Some(request)) => request,
            _ => return,
        };
        if let Ok(mut log) = log.lock() {
            log.push(request.clone());
        }
        let head_only = request.method == "HEAD";
        let writer = reader.get_mut();
        match handler(&request) {
            Reply::Respond(response) => {
                if write_response(writer, &response, head_only).is_err() {
                    return;
                }
            }
            Reply::CutAfter(response, bytes) => {
                let _ = write_head(writer, &response, response.body.len());
                let cut = bytes.min(response.body.len());
                let _ = writer.write_all(&response.body[..cut]);
                let _ = writer.flush();
                reset(writer.tcp());
                return;
            }
        }
    }
}

/// Closes a connection with a TCP reset (SO_LINGER 0), as a crashed peer would.
pub fn reset(stream: &TcpStream) {
    let socket = socket2::SockRef::from(stream);
    let _ = socket.set_linger(Some(Duration::ZERO));
    let _ = stream.shutdown(Shutdown::Both);
}

/// Reads one request; `None` at a clean end of the connection.
pub fn read_request<R: Read>(reader: &mut BufReader<R>) -> io::Result<Option<HttpRequest>> {
    let Some(mut request) = read_request_head(reader)? else {
        return Ok(None);
    };
    request.body = read_body(reader, &request.headers, false)?;
    Ok(Some(request))
}

/// Reads one request's head, leaving its body unread in `reader` (the returned body is
/// empty; [`read_request_body`] reads it); `None` at a clean end of the connection.
pub fn read_request_head<R: Read>(reader: &mut BufReader<R>) -> io::Result<Option<HttpRequest>> {
    let Some((start_line, headers)) = read_head(reader)? else {
        return Ok(None);
    };
    let mut parts = start_line.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    if method.is_empty() || target.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad request line",
        ));
    }
    Ok(Some(HttpRequest {
        method,
        target,
        headers,
        body: Vec::new(),
    }))
}

/// Reads the body of a request whose head [`read_request_head`] returned.
pub fn read_request_body<R: Read>(
    reader: &mut BufReader<R>,
    request: &mut HttpRequest,
) -> io::Result<()> {
    request.body = read_body(reader, &request.headers, false)?;
    Ok(())
}

/// A response read back (by the proxy, from upstream).
#[derive(Debug, Clone)]
pub struct ParsedResponse {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Reads one response; the body per Content-Length, chunked encoding, or to EOF.
pub fn read_response<R: Read>(
    reader: &mut BufReader<R>,
    head_request: bool,
) -> io::Result<ParsedResponse> {
    let Some((status_line, headers)) = read_head(reader)? else {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no response"));
    };
    let mut parts = status_line.splitn(3, ' ');
    let _version = parts.next();
    let status: u16 = parts
        .next()
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
    let reason = parts.next().unwrap_or("").to_string();
    let no_body = head_request || status == 204 || status == 304 || (100..200).contains(&status);
    let body = if no_body {
        Vec::new()
    } else {
        read_body(reader, &headers, true)?
    };
    Ok(ParsedResponse {
        status,
        reason,
        headers,
        body,
    })
}

/// A start line and its headers.
type Head = (String, Vec<(String, String)>);

fn read_head<R: Read>(reader: &mut BufReader<R>) -> io::Result<Option<Head>> {
    let mut first = String::new();
    let mut total = 0;
    loop {
        first.clear();
        let read = reader.read_line(&mut first)?;
        if read == 0 {
            return Ok(None);
        }
        total += read;
        if !first.trim().is_empty() {
            break;
        }
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        let read = reader.read_line(&mut line)?;
        total += read;
        if read == 0 || total > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad header block",
            ));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    Ok(Some((first.trim_end().to_string(), headers)))
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

fn read_body<R: Read>(
    reader: &mut BufReader<R>,
    headers: &[(String, String)],
    until_eof_if_unsized: bool,
) -> io::Result<Vec<u8>> {
    let chunked = find_header(headers, "transfer-encoding")
        .is_some_and(|value| value.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut body = Vec::new();
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let size_text = size_line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers until an empty line.
                loop {
                    let mut line = String::new();
                    let read = reader.read_line(&mut line)?;
                    if read == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                return Ok(body);
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf)?;
        }
    }
    if let Some(length) = find_header(headers, "content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length"))?;
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        return Ok(body);
    }
    let mut body = Vec::new();
    if until_eof_if_unsized {
        reader.read_to_end(&mut body)?;
    }
    Ok(body)
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes a status line and headers, with `Content-Length: content_length`.
pub fn write_head(
    writer: &mut impl Write,
    response: &HttpResponse,
    content_length: usize,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason_phrase(response.status)
    );
    for (name, value) in &response.headers {
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("connection")
        {
            continue;
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {content_length}\r\n\r\n"));
    writer.write_all(head.as_bytes())
}

/// Writes a whole response (no body for HEAD, but the body's length is announced).
pub fn write_response(
    writer: &mut impl Write,
    response: &HttpResponse,
    head_only: bool,
) -> io::Result<()> {
    let announced = if head_only {
        find_header(&response.headers, "content-length")
            .and_then(|value| value.parse().ok())
            .unwrap_or(response.body.len())
    } else {
        response.body.len()
    };
    write_head(writer, response, announced)?;
    if !head_only {
        writer.write_all(&response.body)?;
    }
    writer.flush()
}

fn url_decode_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                let high = (bytes[index + 1] as char).to_digit(16);
                let low = (bytes[index + 2] as char).to_digit(16);
                match (high, low) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        index += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
