"""Git sync over SSH with a deploy key, against a real OpenSSH server started on loopback for
the test (its own host key, config and authorized_keys in a temp dir)."""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator import gitsync
from orchestrator.services import secret_save
from test_git_sync import Remote

pytestmark = pytest.mark.django_db

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _keygen(path: Path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fastflow-test", "-f", str(path)],
                   check=True)
    return path


@pytest.fixture
def sshd(tmp_path):
    if not Path(SSHD).exists():
        if os.environ.get("CI") or os.environ.get("FASTFLOW_REQUIRE_DOCKER") == "1":
            pytest.fail(f"{SSHD} is missing (.ci/run installs Debian's openssh-server)")
        pytest.skip("no sshd (apt-get install openssh-server)")
    root = tmp_path / "sshd"
    root.mkdir()
    host_key = _keygen(root / "host_key")
    deploy_key = _keygen(root / "deploy_key")
    (root / "authorized_keys").write_text(Path(f"{deploy_key}.pub").read_text())
    os.chmod(root / "authorized_keys", 0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = root / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", f"PidFile {root / 'sshd.pid'}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        f"PermitRootLogin {'prohibit-password' if os.getuid() == 0 else 'no'}", f"AllowUsers {_user()}",
        "",
    ]))
    if os.getuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # the privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=open(root / "sshd.log", "wb"))
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, (root / "sshd.log").read_text()
            assert time.monotonic() < deadline, "sshd did not listen"
            time.sleep(0.05)
    yield {"port": port, "deploy_key": deploy_key, "root": root}
    proc.terminate()
    proc.wait(10)


def _user():
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def remote(tmp_path, settings, sshd):
    r = Remote(tmp_path)
    settings.FASTFLOW_GIT_URL = f"ssh://{_user()}@127.0.0.1:{sshd['port']}{r.bare}"
    settings.FASTFLOW_GIT_BRANCH = "main"
    settings.FASTFLOW_GIT_TOKEN = ""
    settings.FASTFLOW_GIT_SSH_KEY = ""
    settings.FASTFLOW_GIT_SSH_KEY_SECRET = ""
    return r


def test_sync_over_ssh_with_a_deploy_key_file(remote, settings, sshd):
    remote.write("etl/main.py", "print('over ssh')\n")
    sha = remote.commit()
    settings.FASTFLOW_GIT_SSH_KEY = str(sshd["deploy_key"])
    assert gitsync.git_sync().commit == sha
    assert (gitsync.checkout_dir() / "etl" / "main.py").read_text() == "print('over ssh')\n"
    known = (gitsync.git_root() / "known_hosts").read_text()  # host key pinned on first use
    assert Path(sshd["root"] / "host_key.pub").read_text().split()[1] in known


def test_sync_over_ssh_with_the_deploy_key_in_a_secret(remote, settings, sshd):
    remote.write("etl/main.py", "print('v1')\n")
    remote.commit()
    private = Path(sshd["deploy_key"]).read_text()
    secret_save(name="GIT_DEPLOY_KEY", value=private, source="test")
    settings.FASTFLOW_GIT_SSH_KEY_SECRET = "GIT_DEPLOY_KEY"
    gitsync.git_sync()
    remote.write("etl/main.py", "print('v2')\n")
    second = remote.commit()
    assert gitsync.git_sync().commit == second  # a fetch over ssh too, not only the clone
    assert (gitsync.checkout_dir() / "etl" / "main.py").read_text() == "print('v2')\n"
    key_file = gitsync.git_root() / "deploy_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" not in (gitsync.checkout_dir() / ".git" / "config").read_text()


def test_a_key_the_server_refuses_is_a_clear_error_and_keeps_the_tree(remote, settings, sshd, tmp_path):
    remote.write("a/main.py", "print('good')\n")
    good = remote.commit()
    settings.FASTFLOW_GIT_SSH_KEY = str(sshd["deploy_key"])
    gitsync.git_sync()
    remote.write("a/main.py", "print('unseen')\n")
    remote.commit()
    settings.FASTFLOW_GIT_SSH_KEY = str(_keygen(tmp_path / "stranger"))
    with pytest.raises(gitsync.GitSyncError, match=r"git fetch failed.*Permission denied"):
        gitsync.git_sync()
    assert gitsync.head() == good
    assert (gitsync.checkout_dir() / "a" / "main.py").read_text() == "print('good')\n"


def test_a_missing_key_secret_names_the_secret(remote, settings):
    settings.FASTFLOW_GIT_SSH_KEY_SECRET = "NO_SUCH_KEY"
    with pytest.raises(gitsync.GitSyncError, match="'NO_SUCH_KEY'.*does not exist"):
        gitsync.git_sync()
