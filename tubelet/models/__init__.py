"""tubelet.models"""
