from digest.web.api.subscribers import router

__all__ = ["router"]
