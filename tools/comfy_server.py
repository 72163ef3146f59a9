"""Start the real ComfyUI server with this pack installed, in a throwaway base directory."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from tools.comfy_env import COMFYUI, REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, base_dir: str, models: dict[str, dict[str, str]] | None = None, port: int | None = None,
                 threads: int | None = None, front_end_root: str | None = None):
        """models: {"checkpoints": {"name.safetensors": "/path/to/file"}, "sae": {...}} are linked in.
        threads: torch CPU threads of the server (default: torch's choice, all cores). On a busy
        shared CPU one thread can be many times faster: extra OpenMP threads spin waiting for a core.
        front_end_root: serve that frontend (a comfyui-frontend-package's static folder) instead of the pinned one."""
        self.base, self.port = base_dir, port or free_port()
        self.threads = threads
        self.front_end_root = front_end_root  # another frontend's static folder (--front-end-root)
        self.url = f"http://127.0.0.1:{self.port}"
        os.makedirs(os.path.join(base_dir, "custom_nodes"), exist_ok=True)
        link = os.path.join(base_dir, "custom_nodes", "ComfyUI-SAEmnesia")
        if not os.path.exists(link):
            os.symlink(REPO, link)
        for folder, files in (models or {}).items():
            os.makedirs(os.path.join(base_dir, "models", folder), exist_ok=True)
            for name, src in files.items():
                dst = os.path.join(base_dir, "models", folder, name)
                if not os.path.exists(dst):
                    os.symlink(src, dst)
        self.log_path = os.path.join(base_dir, "server.log")
        self.proc = None

    def start(self, timeout: float = 240):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.threads:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port",
                                      str(self.port), "--base-directory", self.base, "--disable-auto-launch",
                                      *(["--front-end-root", self.front_end_root] if self.front_end_root else [])],
                                     cwd=COMFYUI, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited early:\n{self.read_log()[-4000:]}")
            try:
                self.get("/object_info/KSampler")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1)
        raise RuntimeError(f"ComfyUI did not start in {timeout}s:\n{self.read_log()[-4000:]}")

    def read_log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"POST {path} -> {e.code}: {e.read().decode()[:3000]}") from None

    def run(self, prompt: dict, timeout: float = 900) -> dict:
        """Queue an API-format graph and wait for its history entry."""
        pid = self.post("/prompt", {"prompt": prompt, "client_id": "saemnesia-tests"})["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{pid}")
            if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
                entry = hist[pid]
                if entry["status"].get("status_str") == "error" or not entry["status"]["completed"]:
                    msgs = [m for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
                    raise RuntimeError(f"prompt failed: {json.dumps(msgs)[:3000]}")
                return entry
            time.sleep(1)
        raise RuntimeError(f"prompt {pid} did not finish in {timeout}s:\n{self.read_log()[-3000:]}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "log", None):
            self.log.close()
