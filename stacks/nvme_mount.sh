# Mounts the instance-store NVMe at /mnt/nvme for LOCAL_CACHE_DIR (contract 5): a fast second
# cache tier in front of EFS. Runs as EC2 user data before the ECS agent starts taking jobs.
# Several instance-store disks (g6e.12xlarge has two) become one RAID0; none leaves a plain folder
# on the root volume, so the job works on any instance type.
set -euo pipefail
MOUNT_POINT=/mnt/nvme
mkdir -p "$MOUNT_POINT"
if ! mountpoint -q "$MOUNT_POINT"; then
  mapfile -t DISKS < <(find /dev/disk/by-id -name 'nvme-Amazon_EC2_NVMe_Instance_Storage_*' ! -name '*-part*' \
    -exec readlink -f {} \; | sort -u)
  DEVICE=""
  if [ "${#DISKS[@]}" -gt 1 ]; then
    command -v mdadm >/dev/null || dnf install -y mdadm || yum install -y mdadm
    mdadm --create /dev/md0 --run --level=0 --raid-devices="${#DISKS[@]}" "${DISKS[@]}"
    DEVICE=/dev/md0
  elif [ "${#DISKS[@]}" -eq 1 ]; then
    DEVICE="${DISKS[0]}"
  fi
  if [ -n "$DEVICE" ]; then
    blkid "$DEVICE" >/dev/null 2>&1 || mkfs.xfs -f "$DEVICE"
    mount -o noatime "$DEVICE" "$MOUNT_POINT"
  fi
fi
mkdir -p "$MOUNT_POINT/models"
chown 1000:1000 "$MOUNT_POINT/models"
