"""Episode storage (the .npz contract) and replay sampling."""
from .buffer import NotEnoughData, Replay
from .episodes import (EpisodeError, episode_files, episode_length, episode_name, load_dir, load_episode,
                       save_episode, validate, warn_skipped)

__all__ = ["EpisodeError", "NotEnoughData", "Replay", "episode_files", "episode_length", "episode_name",
           "load_dir", "load_episode", "save_episode", "validate", "warn_skipped"]
