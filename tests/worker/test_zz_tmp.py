import time, json
from tests.worker.test_multi_gpu_worker import *
def test_x(worker_env, tiny_model_dir, tmp_path):
    t=time.time(); one = write_spec(tmp_path / "one", tiny_model_dir, gpus=1)
    worker_env.setenv("SPEC_URI", str(one)); assert main() == 0; print("inproc", time.time()-t)
    two = write_spec(tmp_path / "two", tiny_model_dir, gpus=2); t=time.time()
    env = {**os.environ, "SPEC_URI": str(two), "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'batch_image'}"}
    done = subprocess.run([sys.executable, "-m", "worker"], env=env, cwd=REPO / "batch_image", capture_output=True, text=True)
    print("sub", time.time()-t)
    for e in log_events(done.stdout): print(e["ts"][11:23], e["event"], e.get("rank"))
