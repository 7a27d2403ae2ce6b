"""A stand-in for Supabase Storage, so that both servers' upload paths can be compared on one
machine: the original only stores to Supabase. It answers the routes the two servers use the way
the real server does (../shared/notes/supabase-storage.md): errors as HTTP 400 with the true status
in the body's string `statusCode`, create-only uploads unless `x-upsert: true`. Objects are kept
in memory; nothing is checked about the key but its presence (it is not a security test).

    python3 bench/storage_standin.py PORT BUCKET
"""
import json
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

PORT, BUCKET = int(sys.argv[1]), sys.argv[2]
objects = {}  # key -> (content type, bytes)
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as both servers' HTTP clients expect

    def log_message(self, *args):
        pass

    def send(self, status, body=b"", content_type="application/json", head=False):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def error(self, status, error, message, code, head=False):
        self.send(400, b"" if head else {"statusCode": str(status), "error": error,
                                         "message": message, "code": code}, head=head)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def route(self):
        """(area, bucket, key) of /storage/v1/object/[public/]bucket[/key], or None."""
        path = unquote(urlsplit(self.path).path)
        prefix = "/storage/v1/object/"
        if not path.startswith(prefix):
            return None
        rest, area = path[len(prefix):], ""
        for a in ("public/", "list/"):
            if rest.startswith(a):
                rest, area = rest[len(a):], a
        bucket, _, key = rest.partition("/")
        return area, bucket, key

    def authorized(self, head=False):
        if not self.headers.get("Authorization"):
            self.error(400, "Error", "headers must have required property 'authorization'",
                       "InvalidRequest", head)
            return False
        return True

    def do_GET(self, head=False):
        path = urlsplit(self.path).path
        if path == f"/storage/v1/bucket/{BUCKET}":
            if self.authorized(head):
                self.send(200, {"id": BUCKET, "name": BUCKET, "public": True}, head=head)
            return
        r = self.route()
        if r is None or r[1] != BUCKET or r[0] == "list/":
            return self.error(404, "not_found", "Object not found", "NoSuchKey", head)
        if r[0] == "" and not self.authorized(head):
            return
        with lock:
            found = objects.get(r[2])
        if found is None:
            return self.error(404, "not_found", "Object not found", "NoSuchKey", head)
        self.send(200, found[1], found[0], head)

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_POST(self):
        r, data = self.route(), self.body()
        if r is None:
            return self.send(404, {"statusCode": 404, "error": "Not Found"})
        if not self.authorized():
            return
        area, bucket, key = r
        if bucket != BUCKET:
            return self.error(404, "Bucket not found", "Bucket not found", "NoSuchBucket")
        if area == "list/":
            with lock:
                names = sorted(objects)
            return self.send(200, [{"name": n, "id": str(uuid.uuid4())} for n in names])
        upsert = self.headers.get("x-upsert", "false").lower() == "true"
        with lock:
            if key in objects and not upsert:
                return self.error(409, "Duplicate", "The resource already exists", "KeyAlreadyExists")
            objects[key] = (self.headers.get("Content-Type", "application/octet-stream"), data)
        self.send(200, {"Key": f"{bucket}/{key}", "Id": str(uuid.uuid4())})

    def do_DELETE(self):
        r, data = self.route(), self.body()
        if r is None or not self.authorized():
            return
        area, bucket, key = r
        if bucket != BUCKET:
            return self.error(404, "Bucket not found", "Bucket not found", "NoSuchBucket")
        keys = json.loads(data or b"{}").get("prefixes", []) if not key else [key]
        with lock:
            gone = [k for k in keys if objects.pop(k, None) is not None]
        if key and not gone:
            return self.error(404, "not_found", "Object not found", "NoSuchKey")
        self.send(200, [{"name": k} for k in gone] if not key else {"message": "Successfully deleted"})


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
