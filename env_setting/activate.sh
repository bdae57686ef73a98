# shellcheck shell=bash
# Source from the repository root on a compute node: activates the environment built for this
# node's architecture (env_setting/README.md) and sets what the job scripts need.
#   a venv $XECJAX_ENV_DIR/xecjax-<arch> (default XECJAX_ENV_DIR=$HOME/envs), else the conda
#   environment xecjax-<arch>.
arch=$(uname -m)
env_dir="${XECJAX_ENV_DIR:-$HOME/envs}/xecjax-$arch"
if [[ -f "$env_dir/bin/activate" ]]; then
  # shellcheck source=/dev/null
  source "$env_dir/bin/activate"
else
  eval "$(conda shell.bash hook)"
  conda activate "xecjax-$arch"
fi
# CUDA/cuDNN libraries of the pip NVIDIA wheels, for onnxruntime-gpu (jax finds them itself).
nv=$(python -c 'import nvidia, os; p = nvidia.__path__[0]; print(":".join(os.path.join(p, d, "lib") for d in sorted(os.listdir(p))))' 2>/dev/null || true)
export LD_LIBRARY_PATH="${nv:+$nv:}${LD_LIBRARY_PATH:-}"
export PYTHONUNBUFFERED=1
export XECJAX_ARCH=$arch
