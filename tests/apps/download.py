"""A build step for the image (`build_config.model_download`): would fetch weights into the image."""


def fetch_weights(revision: str = "main") -> None:
    print(f"downloading weights at {revision}")
