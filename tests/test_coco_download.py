"""data/scripts/COCO.sh and COCO_test.sh (coco_download.sh), run for real against a local HTTP
server on 127.0.0.1 that serves tiny COCO-shaped zip files built here: fresh download, resume of
an interrupted download (within a run and across runs, curl and wget), rerun without requests,
corrupt archives, the shared annotations/ folder, and the built-in archive lists."""
import hashlib
import io
import json
import os
import re
import subprocess
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import cv2
import numpy as np
import pytest

from data import config as config_module
from data.coco import COCODetection, coco_dataset_paths

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / 'data' / 'scripts'
TIMEOUT = 60  # seconds per script run; the archives are a few kB


# ----------------------------------------------------------------------------- archives

def _jpeg(seed: int) -> bytes:
    noise = np.random.default_rng(seed).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    ok, buf = cv2.imencode('.jpg', noise)
    assert ok
    return buf.tobytes()


def _instances(image_ids: List[int]) -> bytes:
    return json.dumps({
        'images': [{'id': i, 'file_name': f'{i:012d}.jpg', 'height': 32, 'width': 48} for i in image_ids],
        'annotations': [{'id': i, 'image_id': i, 'category_id': 1, 'iscrowd': 0, 'area': 100.0,
                         'bbox': [4, 4, 10, 10], 'segmentation': [[4, 4, 14, 4, 14, 14, 4, 14]]}
                        for i in image_ids],
        'categories': [{'id': 1, 'name': 'person'}]}).encode()


def _zip(members: Dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, 'w', zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


TRAIN_IDS, VAL_IDS, TEST_IDS = [9, 25, 30], [139, 285], [1, 16]
ARCHIVES = {  # url path -> (zip bytes, folder)
    'annotations/annotations_trainval2017.zip': (_zip({
        'annotations/instances_train2017.json': _instances(TRAIN_IDS),
        'annotations/instances_val2017.json': _instances(VAL_IDS)}), 'annotations'),
    'zips/val2017.zip': (_zip({f'val2017/{i:012d}.jpg': _jpeg(i) for i in VAL_IDS}), 'val2017'),
    'zips/train2017.zip': (_zip({f'train2017/{i:012d}.jpg': _jpeg(i) for i in TRAIN_IDS}), 'train2017'),
}
TEST_ARCHIVES = {
    'annotations/image_info_test2017.zip': (_zip({
        'annotations/image_info_test2017.json': b'{"images": []}',
        'annotations/image_info_test-dev2017.json': b'{"images": []}'}), 'annotations'),
    'zips/test2017.zip': (_zip({f'test2017/{i:012d}.jpg': _jpeg(i) for i in TEST_IDS}), 'test2017'),
}
VAL = 'zips/val2017.zip'


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def write_manifest(path: Path, archives: Dict[str, Tuple[bytes, str]],
                   overrides: Optional[Dict[str, Tuple[str, str]]] = None) -> Path:
    """A COCO_MANIFEST for `archives`; overrides: url path -> (bytes, md5) fields as written."""
    lines = ['# path bytes md5 folder']
    for url_path, (data, folder) in archives.items():
        size, md5 = (overrides or {}).get(url_path, (str(len(data)), _md5(data)))
        lines.append(f'{url_path} {size} {md5} {folder}')
    path.write_text('\n'.join(lines) + '\n')
    return path


# ----------------------------------------------------------------------------- the server

class FileServer:
    """Serves `files` (url path -> bytes) on 127.0.0.1 with byte ranges; records every request as
    (method, path, Range header). A path in `truncate_once` gets, on its next GET, the headers of
    the whole answer but only half the bytes before the connection closes (a dropped download)."""

    def __init__(self, files: Dict[str, bytes]):
        self.files = dict(files)
        self.requests: List[Tuple[str, str, Optional[str]]] = []
        self.truncate_once: Set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                path = self.path.lstrip('/')
                server.requests.append((self.command, path, self.headers.get('Range')))
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r'bytes=(\d+)-', self.headers.get('Range') or '')
                if match:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header('Content-Range', f'bytes */{len(data)}')
                        self.send_header('Content-Length', '0')
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
                else:
                    self.send_response(200)
                self.send_header('Accept-Ranges', 'bytes')
                self.send_header('Content-Length', str(len(data) - start))
                self.end_headers()
                if not body:
                    return
                payload = data[start:]
                if path in server.truncate_once:
                    server.truncate_once.discard(path)
                    payload = payload[:len(payload) // 2]
                    self.close_connection = True
                self.wfile.write(payload)
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={'poll_interval': 0.1},
                                       daemon=True)
        self.thread.start()

    def gets(self, path: str) -> List[Optional[str]]:
        """The Range headers of the GET requests for `path`, in order."""
        return [rng for method, p, rng in self.requests if method == 'GET' and p == path]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    files = {path: data for path, (data, _) in {**ARCHIVES, **TEST_ARCHIVES}.items()}
    srv = FileServer(files)
    yield srv
    srv.close()


def run_script(server: FileServer, root: Path, manifest: Path, script: str = 'COCO.sh',
               **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith('COCO_')}
    full_env.update(COCO_BASE_URL=server.url, COCO_MANIFEST=str(manifest), **env)
    for proxy in ('http_proxy', 'HTTP_PROXY', 'all_proxy', 'ALL_PROXY'):
        full_env.pop(proxy, None)
    return subprocess.run(['bash', str(SCRIPTS / script), str(root)], env=full_env, text=True,
                          capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The script's one error line (progress output of the downloader may precede it)."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert proc.returncode != 0 and len(errors) == 1, (proc.returncode, proc.stdout, proc.stderr)
    return errors[0]


def assert_complete_layout(root: Path) -> None:
    """Everything of ARCHIVES unpacked where train.py/eval.py look, nothing left behind."""
    for data, _folder in ARCHIVES.values():
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for name in z.namelist():
                assert (root / name).read_bytes() == z.read(name), name
    assert sorted(p.name for p in (root / '.coco').iterdir()) == sorted(
        Path(p).name + '.done' for p in ARCHIVES)  # no .part, zip or temporary folder left
    paths = coco_dataset_paths(str(root))
    dataset = COCODetection(paths.valid_images, paths.valid_info, config=config_module.cfg)
    assert len(dataset) == len(VAL_IDS) and dataset.pull_image(0).shape == (32, 48, 3)


# ----------------------------------------------------------------------------- scenarios

def test_fresh_run_unpacks_the_layout_and_a_rerun_downloads_nothing(server, tmp_path):
    root, manifest = tmp_path / 'coco', write_manifest(tmp_path / 'manifest', ARCHIVES)
    proc = run_script(server, root, manifest)
    assert proc.returncode == 0, proc.stderr
    assert_complete_layout(root)
    assert sorted(p for m, p, _ in server.requests if m == 'GET') == sorted(ARCHIVES)

    server.requests.clear()
    again = run_script(server, root, manifest)
    assert again.returncode == 0, again.stderr
    assert server.requests == []
    assert again.stdout.count('already in place') == len(ARCHIVES)
    assert_complete_layout(root)


@pytest.mark.parametrize('downloader', ['curl', 'wget'])
def test_interrupted_download_is_resumed_on_the_next_run(server, tmp_path, downloader):
    root, manifest = tmp_path / 'coco', write_manifest(tmp_path / 'manifest', ARCHIVES)
    val_zip = ARCHIVES[VAL][0]
    server.truncate_once.add(VAL)
    first = run_script(server, root, manifest, COCO_RETRIES='1', COCO_DOWNLOADER=downloader)
    assert 'run the script again to resume' in error_line(first)
    part = root / '.coco' / 'val2017.zip.part'
    assert part.read_bytes() == val_zip[:len(val_zip) // 2]
    assert not (root / 'val2017').exists()

    second = run_script(server, root, manifest, COCO_DOWNLOADER=downloader)
    assert second.returncode == 0, second.stderr
    assert f'Resuming val2017.zip at byte {len(val_zip) // 2}' in second.stdout
    assert server.gets(VAL) == [None, f'bytes={len(val_zip) // 2}-']
    assert_complete_layout(root)


def test_dropped_connection_is_retried_within_the_run(server, tmp_path):
    root, manifest = tmp_path / 'coco', write_manifest(tmp_path / 'manifest', ARCHIVES)
    server.truncate_once.add(VAL)
    proc = run_script(server, root, manifest)
    assert proc.returncode == 0, proc.stderr
    assert 'retrying (attempt 2 of 5)' in proc.stdout
    half = len(ARCHIVES[VAL][0]) // 2
    assert server.gets(VAL) == [None, f'bytes={half}-']
    assert_complete_layout(root)


def test_partial_file_is_continued_and_an_oversized_one_restarted(server, tmp_path):
    root, manifest = tmp_path / 'coco', write_manifest(tmp_path / 'manifest', ARCHIVES)
    (root / '.coco').mkdir(parents=True)
    val_zip, train_zip = ARCHIVES[VAL][0], ARCHIVES['zips/train2017.zip'][0]
    (root / '.coco' / 'val2017.zip.part').write_bytes(val_zip[:100])
    (root / '.coco' / 'train2017.zip.part').write_bytes(train_zip + b'junk')
    proc = run_script(server, root, manifest)
    assert proc.returncode == 0, proc.stderr
    assert server.gets(VAL) == ['bytes=100-']
    assert server.gets('zips/train2017.zip') == [None]
    assert 'more than the expected' in proc.stdout
    assert_complete_layout(root)


def test_wrong_checksum_is_an_error_and_leaves_no_layout(server, tmp_path):
    root, manifest = tmp_path / 'coco', write_manifest(tmp_path / 'manifest', ARCHIVES)
    good = server.files[VAL]
    server.files[VAL] = bytes(len(good))  # right size, wrong bytes
    proc = run_script(server, root, manifest)
    line = error_line(proc)
    assert line.startswith(f'error: val2017.zip is corrupt: md5 {_md5(bytes(len(good)))}, expected {_md5(good)}')
    assert not (root / 'val2017').exists()
    assert not list((root / '.coco').glob('val2017*'))  # the bad file is gone, no marker

    server.files[VAL] = good
    assert run_script(server, root, manifest).returncode == 0
    assert_complete_layout(root)


def test_unreadable_archive_is_an_error_and_nothing_half_unpacked_remains(server, tmp_path):
    good = server.files[VAL]
    broken = good[:len(good) // 2] + bytes(len(good) - len(good) // 2)  # a zip cut off and padded
    server.files[VAL] = broken
    root = tmp_path / 'coco'
    manifest = write_manifest(tmp_path / 'manifest', ARCHIVES, {VAL: (str(len(broken)), '-')})
    proc = run_script(server, root, manifest)
    assert error_line(proc) == ('error: val2017.zip is not a readable zip archive '
                                '(deleted; run the script again to download it anew)')
    assert not (root / 'val2017').exists()
    assert sorted(p.name for p in (root / '.coco').iterdir()) == ['annotations_trainval2017.zip.done']

    server.files[VAL] = good
    manifest = write_manifest(tmp_path / 'manifest', ARCHIVES)
    assert run_script(server, root, manifest).returncode == 0
    assert_complete_layout(root)


def test_test_dev_script_shares_annotations_and_takes_an_unknown_size_from_the_server(server, tmp_path):
    root = tmp_path / 'coco'
    assert run_script(server, root, write_manifest(tmp_path / 'm1', ARCHIVES)).returncode == 0
    info = 'annotations/image_info_test2017.zip'
    manifest = write_manifest(tmp_path / 'm2', TEST_ARCHIVES,
                              {info: ('-', _md5(TEST_ARCHIVES[info][0]))})
    proc = run_script(server, root, manifest, script='COCO_test.sh')
    assert proc.returncode == 0, proc.stderr
    assert [m for m, p, _ in server.requests if p == info] == ['HEAD', 'GET']
    assert sorted(p.name for p in (root / 'annotations').iterdir()) == [
        'image_info_test-dev2017.json', 'image_info_test2017.json',
        'instances_train2017.json', 'instances_val2017.json']
    assert sorted(p.name for p in (root / 'test2017').iterdir()) == [f'{i:012d}.jpg' for i in TEST_IDS]
    assert (root / 'val2017').is_dir() and (root / 'train2017').is_dir()


def test_unreachable_server_is_one_error_line(tmp_path):
    srv = FileServer({})
    url = srv.url
    srv.close()  # nothing listens there any more
    env = {**os.environ, 'COCO_BASE_URL': url, 'COCO_RETRIES': '1'}
    env.pop('COCO_MANIFEST', None)
    runs = {script: subprocess.run(['bash', str(SCRIPTS / script), str(tmp_path / 'coco')], text=True,
                                   capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL, env=env)
            for script in ('COCO.sh', 'COCO_test.sh')}
    assert f'error: downloading {url}/annotations/annotations_trainval2017.zip failed' in error_line(runs['COCO.sh'])
    # The test-dev image info has no size in the list: it is asked of the server first.
    assert error_line(runs['COCO_test.sh']).startswith(
        f'error: cannot get the size of {url}/annotations/image_info_test2017.zip')


# ----------------------------------------------------------------------------- the built-in lists

def _builtin_list(script: str) -> List[Tuple[str, str, str, str]]:
    text = (SCRIPTS / script).read_text()
    block = re.search(r'^COCO_FILES="\n(.*?)^"', text, re.S | re.M).group(1)
    return [tuple(line.split()) for line in block.splitlines() if line.strip()]


def test_builtin_archive_lists_match_the_dataset_layout():
    train_val = _builtin_list('COCO.sh')
    assert {folder for *_, folder in train_val} == {'train2017', 'val2017', 'annotations'}
    test_dev = _builtin_list('COCO_test.sh')
    assert {folder for *_, folder in test_dev} == {'test2017', 'annotations'}
    for path, size, md5, _folder in train_val + test_dev:
        assert re.fullmatch(r'(zips|annotations)/\w+2017\.zip', path)
        assert size == '-' or size.isdigit()
        assert re.fullmatch(r'[0-9a-f]{32}', md5)  # the official archives are always checked
    # The configs' default paths are the layout the script writes under ./data/coco.
    coco, testdev = config_module.coco2017_dataset, config_module.coco2017_testdev_dataset
    assert Path(coco.train_images) == Path('data/coco/train2017')
    assert Path(coco.valid_images) == Path('data/coco/val2017')
    assert Path(coco.valid_info) == Path('data/coco/annotations/instances_val2017.json')
    assert Path(testdev.valid_images) == Path('data/coco/test2017')
    assert Path(testdev.valid_info) == Path('data/coco/annotations/image_info_test-dev2017.json')
