"""tubelet.train"""
