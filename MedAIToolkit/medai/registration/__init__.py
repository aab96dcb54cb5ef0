"""2D/3D registration: fluoroscopy frame -> C-arm pose of the CT, by a Q-learning agent and refinement."""
from .agent import Agent, AgentSettings, run_agent
from .frame import Frame, frame_from_array, load_frame
from .pipeline import Registrar, RegistrationResult, mtre_of
from .poses import ACTION_NAMES, MODE_ACTIONS, RigidPose

__all__ = ["ACTION_NAMES", "MODE_ACTIONS", "Agent", "AgentSettings", "Frame", "Registrar", "RegistrationResult",
           "RigidPose", "frame_from_array", "load_frame", "mtre_of", "run_agent"]
