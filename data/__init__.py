"""Configs and datasets: ``from data import cfg, set_cfg, COCODetection, detection_collate, MEANS``."""
from .coco import *
from .config import *
