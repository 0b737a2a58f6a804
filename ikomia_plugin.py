"""The plugin interface: the factories Ikomia asks for when it loads infer_kandinsky_2_2."""

from ikomia import dataprocess


class IkomiaPlugin(dataprocess.CPluginProcessInterface):
    """Gives Ikomia the task, widget and parameter factories of infer_kandinsky_2_2."""

    def __init__(self) -> None:
        dataprocess.CPluginProcessInterface.__init__(self)

    def get_process_factory(self) -> dataprocess.CTaskFactory:
        from .infer_kandinsky_2_2_process import InferKandinsky22Factory

        return InferKandinsky22Factory()

    def get_param_factory(self) -> dataprocess.CTaskParamFactory:
        from .infer_kandinsky_2_2_process import InferKandinsky22ParamFactory

        return InferKandinsky22ParamFactory()

    def get_widget_factory(self) -> dataprocess.CWidgetFactory:
        from .infer_kandinsky_2_2_widget import InferKandinsky22WidgetFactory

        return InferKandinsky22WidgetFactory()
