from digest.web.admin.views import check_credentials, hash_password, mount_admin

__all__ = ["check_credentials", "hash_password", "mount_admin"]
